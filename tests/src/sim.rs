//! A simulated cluster in one process: the leader's real planner, store (in memory), node
//! registry and status handling, and N boards each running the agent's real reconciler against
//! fake containers and images — on a clock moved by hand. Sessions are the real session state
//! machines of both sides (`bramble_leader::sessions::machine`, `bramble_agent::session::machine`)
//! joined by direct calls instead of QUIC: what crosses, and in which order — network views,
//! secrets and configs, desired sets, statuses, confirmations — is what real boards see. Faults:
//! [`Sim::partition`], [`Sim::crash`], agent and leader restarts, restores from a backup
//! ([`Sim::restore_without`]); certificate renewals ([`Sim::certificate_due`]) are signed by a real CA.
//!
//! One [`Sim::step`] is one tick of every loop: boards finish their background jobs and make a
//! pass, statuses go up, the leader checks readiness and makes a pass, desired sets go down.

use bramble_agent::net::fake::FakeKernel;
use bramble_agent::net::node::Controller as NetController;
use bramble_agent::reconcile::fake::{Call, FakeContainers, FakeImages, FakeNetwork};
use bramble_agent::reconcile::{Containers, Images, Input, Job, Network, Reconciler};
use bramble_agent::session::machine::{Output, Session as AgentSession};
use bramble_leader::boards::nodes::{NodeRegistry, Session};
use bramble_leader::boards::observed::Observed;
use bramble_leader::controllers::desired::DesiredSets;
use bramble_leader::controllers::{run, Context};
use bramble_leader::events::Events;
use bramble_leader::objects::Objects;
use bramble_leader::sessions::machine::{Payload, Session as LeaderSession};
use bramble_leader::store::{Expect, MemStore, Store};
use bramble_proto::manifest::{parse_manifest, AppSpec};
use bramble_proto::model::{Arch, Node, NodeInfo, Platform, Replica, ReplicaPhase, Resources};
use bramble_proto::time::{Clock, ManualClock};
use bramble_proto::wire::{AgentMsg, LeaderMsg};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The leader's grace period before a silent node is NotReady (the default).
pub const GRACE: Duration = Duration::from_secs(5);

type AgentReconciler = Reconciler<FakeContainers, FakeImages, FakeNetwork>;

/// One board.
pub struct Board {
    pub name: String,
    pub arch: Arch,
    pub containers: Arc<FakeContainers>,
    pub images: Arc<FakeImages>,
    /// Pods' addresses (kept across agent restarts, as the real IPAM is).
    pub network: Arc<FakeNetwork>,
    /// The agent process (`None` while it is down); its containers live on regardless.
    agent: Option<AgentReconciler>,
    dir: tempfile::TempDir,
    /// Cut off from the leader.
    pub partitioned: bool,
    epoch: u64,
    session: Option<SimSession>,
    jobs: Vec<Job>,
    /// The secrets (name → version) and configs the board holds, as its sessions gave them.
    pub secrets: BTreeMap<String, u64>,
    pub configs: BTreeMap<String, u64>,
    /// Registry settings it holds, by host, with their versions.
    pub registries: BTreeMap<String, u64>,
    /// The board's real network controller (`net::node`) against a recording kernel: what the
    /// leader's views become in its nft table, its DNS and its `network.json`.
    net: NetController<FakeKernel>,
    /// The board's kernel as the controller left it (survives agent restarts).
    pub kernel: FakeKernel,
    /// The views the controller has put in the kernel (the latest).
    net_applied: tokio::sync::watch::Receiver<u64>,
    /// The host ports and control-plane pods the controller is told (none in the sim: its pods'
    /// addresses are the reconciler's fakes').
    _pod_rules: tokio::sync::watch::Sender<bramble_agent::net::ports::PodRules>,
    /// When its certificate is due for renewal (none: not modelled until [`Sim::certificate_due`]).
    pub renew_at: Option<u64>,
    /// Certificates it was given by renewals, newest last.
    pub renewed: Vec<String>,
}

/// One live session: both sides' real session machines.
struct SimSession {
    epoch: u64,
    leader: LeaderSession,
    agent: AgentSession,
    /// A renewal request on its way to the leader (answered in the next step; lost with the
    /// session).
    renewal: Option<String>,
}

/// The leader's memory (lost when it restarts); its store survives.
struct Leader {
    ctx: Context,
    /// What its controller publishes for sessions (the network view's versions).
    bus: bramble_leader::controllers::Published,
    /// Restored from a backup and not every board seen yet: sessions hold sets back.
    restored: std::sync::atomic::AtomicBool,
}

pub struct Sim {
    pub clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    leader: Option<Leader>,
    pub boards: Vec<Board>,
    /// What the replica controller last published.
    pub published: Option<DesiredSets>,
    /// The image platforms restricted images offer (told to boards' fakes).
    offered: BTreeMap<String, Vec<Platform>>,
    /// Boards whose confirmations of network views never reach the leader.
    muted: BTreeSet<String>,
    /// The cluster's CA (in the store's place on disk: it survives leader restarts).
    ca: bramble_transport::pki::Ca,
}

fn node(name: &str, arch: Arch) -> Node {
    let res = Resources { cpu_millis: 4000, memory_bytes: 4 << 30, replicas: 64 };
    Node::joined(name, format!("key-{name}"), NodeInfo::board(arch, res), 1)
}

/// A board's network controller as the agent starts it, against `kernel`, keeping its state in
/// `dir` (so a restarted agent finds what the leader last said).
fn network_controller(
    dir: &std::path::Path,
    kernel: &FakeKernel,
) -> (
    NetController<FakeKernel>,
    tokio::sync::watch::Receiver<u64>,
    tokio::sync::watch::Sender<bramble_agent::net::ports::PodRules>,
) {
    let settings = bramble_agent::net::node::Settings {
        bridge: "bramble0".into(),
        mtu: 1500,
        dns_upstreams: vec!["192.0.2.53:53".parse().expect("an address")],
        state_file: dir.join("network.json"),
        host_ports: bramble_agent::net::ports::HostPortPolicy::new(Default::default(), &[], &[]),
        control_ports: BTreeSet::new(),
        check_every: Duration::from_secs(60),
        nft: true,
    };
    let pods = Arc::new(bramble_agent::net::pods::Pods::open(&dir.join("pods")).expect("the pods' dir"));
    let (tx, rx) = tokio::sync::watch::channel(Default::default());
    let net = NetController::with_kernel(settings, pods, rx, kernel.clone());
    let applied = net.applied_versions();
    (net, applied, tx)
}

fn new_leader(store: &Arc<dyn Store>) -> Leader {
    let events = Arc::new(Events::new());
    let ctx = Context {
        objects: Objects::new(store.clone()),
        registry: Arc::new(NodeRegistry::new(GRACE, events.clone())),
        observed: Arc::new(Observed::new()),
        events,
        network: Arc::new(bramble_proto::network::ClusterNetwork::default()),
        drain: Arc::default(),
        control_ports: Arc::default(),
    };
    // As the leader's wiring does before any session.
    let restored = store.get(bramble_leader::objects::keys::RESTORED).expect("the store answers").is_some();
    Leader { ctx, bus: Default::default(), restored: restored.into() }
}

/// Board `board-<n>` of `arch`: joined (its node stored), its agent started, not connected yet.
fn make_board(objects: &Objects, clock: &Arc<ManualClock>, n: usize, arch: &Arch) -> Board {
    let name = format!("board-{n}");
    objects.put(&node(&name, arch.clone()), Expect::Absent).expect("node stored");
    let containers = Arc::new(FakeContainers::new(clock.clone()));
    let images = Arc::new(FakeImages::new(arch.clone()));
    let subnet = format!("10.42.{n}.0/24").parse().expect("a subnet");
    let network = Arc::new(FakeNetwork::new(subnet));
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = FakeKernel::default();
    let (net, net_applied, pod_rules) = network_controller(dir.path(), &kernel);
    let mut b = Board {
        name,
        arch: arch.clone(),
        containers,
        images,
        network,
        agent: None,
        dir,
        partitioned: false,
        epoch: 0,
        session: None,
        jobs: Vec::new(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        registries: BTreeMap::new(),
        net,
        kernel,
        net_applied,
        _pod_rules: pod_rules,
        renew_at: None,
        renewed: Vec::new(),
    };
    b.start_agent();
    b
}

impl Sim {
    /// A new board joins (`board-<n+1>`): stored, its agent started; it connects on the next step.
    pub fn add_board(&mut self, arch: Arch) -> String {
        let b = make_board(&self.objects(), &self.clock, self.boards.len() + 1, &arch);
        let name = b.name.clone();
        self.boards.push(b);
        name
    }

    /// Starts a drain of `board` as `bramble drain` does (`None`: uncordons it, ending the drain).
    pub fn drain(&self, board: &str, include_every_board: Option<bool>) {
        let now = self.now_ms();
        self.objects()
            .update::<bramble_proto::model::Node>(board, |n| {
                n.unschedulable = include_every_board.is_some();
                n.draining = include_every_board.map(|all| bramble_proto::model::Draining {
                    since_ms: now,
                    by: "sim".into(),
                    include_every_board: all,
                });
                Ok(true)
            })
            .expect("node updated");
    }

    /// How the drain of `board` stood at the replica controller's last pass.
    pub fn drain_status(&self, board: &str) -> Option<bramble_leader::controllers::plan::DrainStatus> {
        self.ctx().drain.board(board)
    }

    /// Sets (`Some`) or removes (`None`) an operator's label on a board's node.
    pub fn label(&self, board: &str, key: &str, value: Option<&str>) {
        self.objects()
            .update::<bramble_proto::model::Node>(board, |n| {
                match value {
                    Some(v) => n.labels.insert(key.into(), v.into()),
                    None => n.labels.remove(key),
                };
                Ok(true)
            })
            .expect("node labelled");
    }
}

impl Sim {
    /// A leader and boards of these archs (`board-1` …), all joined, none connected yet.
    pub fn new(archs: &[Arch]) -> Sim {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let objects = Objects::new(store.clone());
        let mut boards = Vec::new();
        for (i, arch) in archs.iter().enumerate() {
            boards.push(make_board(&objects, &clock, i + 1, arch));
        }
        let leader = Some(new_leader(&store));
        let ca = bramble_transport::pki::Ca::generate("sim").expect("a CA");
        Sim { clock, store, leader, boards, published: None, offered: BTreeMap::new(), muted: BTreeSet::new(), ca }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The leader's context (panics while the leader is down).
    pub fn ctx(&self) -> &Context {
        &self.leader.as_ref().expect("the leader is up").ctx
    }

    pub fn objects(&self) -> Objects {
        Objects::new(self.store.clone())
    }

    /// Applies a manifest (all of its apps) as `bramble apply` would.
    pub fn apply(&self, text: &str) {
        let m = parse_manifest("sim.toml", text).expect("manifest parses");
        self.apply_objects(m.apps, m.services);
    }

    fn apply_specs(&self, apps: Vec<AppSpec>) {
        self.apply_objects(apps, Vec::new());
    }

    fn apply_objects(&self, apps: Vec<AppSpec>, services: Vec<bramble_proto::manifest::ServiceSpec>) {
        let events = self.leader.as_ref().map(|l| l.ctx.events.clone()).unwrap_or_default();
        let network = bramble_proto::network::ClusterNetwork::default();
        let now = self.clock.now_ms();
        bramble_leader::api::apps::apply(
            &self.objects(),
            &events,
            (&network, &bramble_leader::admission::Reserved::default()),
            bramble_leader::api::apps::Specs { apps, services, ..Default::default() },
            "the sim",
            now,
        )
        .expect("apply");
    }

    /// Sets an app's replica count.
    pub fn scale(&self, app: &str, replicas: u32) {
        let mut spec = self.spec(app);
        spec.replicas = bramble_proto::manifest::Replicas(replicas);
        self.apply_specs(vec![spec]);
    }

    /// A new revision of `app`: its arguments change.
    pub fn roll(&self, app: &str, arg: &str) {
        let mut spec = self.spec(app);
        spec.args = vec![arg.to_string()];
        self.apply_specs(vec![spec]);
    }

    pub fn spec(&self, app: &str) -> AppSpec {
        self.objects().load::<bramble_proto::model::App>(app).expect("app exists").value.spec
    }

    /// `board` stays connected but its confirmations of network views are lost.
    pub fn mute_confirmations(&mut self, board: &str) {
        self.muted.insert(board.to_string());
    }

    /// Creates secret `name`, or updates it (a new version), as `bramble secret create|set` does;
    /// every session hears that a secret changed. (The sim keeps no values: versions are what the
    /// rules are about.)
    pub fn put_secret(&mut self, name: &str) {
        use bramble_leader::trust::secrets::{Sealed, StoredSecret};
        let objects = self.objects();
        let now = self.clock.now_ms();
        let current = objects.get::<StoredSecret>(name).expect("secrets read");
        let (meta, version, expect) = match &current {
            None => (
                bramble_proto::model::ObjectMeta {
                    name: name.to_string(),
                    generation: 1,
                    revision: 0,
                    created_ms: now,
                    changed_by: None,
                },
                1,
                Expect::Absent,
            ),
            Some(v) => (v.value.meta.clone(), v.value.version + 1, Expect::Revision(v.rev)),
        };
        let sealed = Sealed { key_id: 1, nonce: String::new(), ciphertext: String::new() };
        let stored =
            StoredSecret { meta, version, updated_ms: now, sizes: BTreeMap::new(), sealed, allowed_apps: None };
        objects.put(&stored, expect).expect("secret stored");
        for b in &mut self.boards {
            if let Some(session) = b.session.as_mut() {
                session.leader.payloads_changed();
            }
        }
    }

    /// Invariant: a board with a session holds exactly the secrets its desired set uses that
    /// exist, each at its current version — never one no replica there uses. While a restore holds
    /// sets back, a board keeps what the replicas the backup does not know use: then it holds at
    /// least those of its set, each at its current version.
    pub fn check_secrets(&self) {
        use bramble_leader::trust::secrets::StoredSecret;
        let Some(sets) = &self.published else { return };
        let objects = self.objects();
        for b in self.boards.iter().filter(|b| b.session.is_some()) {
            let set = sets.get(&b.name).cloned().unwrap_or_default();
            let wanted: BTreeMap<String, u64> = Payload::Secrets
                .needed(&set)
                .into_iter()
                .filter_map(|n| objects.get::<StoredSecret>(&n).expect("secrets read").map(|v| (n, v.value.version)))
                .collect();
            if self.restoring() {
                let missing: Vec<_> = wanted.iter().filter(|(n, v)| b.secrets.get(*n) != Some(*v)).collect();
                assert!(missing.is_empty(), "{} lacks {missing:?} during a restore's hold-back", b.name);
            } else {
                assert_eq!(b.secrets, wanted, "{}'s secrets", b.name);
            }
        }
    }

    /// Invariant: every board with a session has been told exactly the leader's services and
    /// endpoints, and its nft table sends each virtual port to exactly the ready ones.
    pub fn check_endpoints(&self) {
        let Some(leader) = &self.leader else { return };
        let Some(view) = leader.bus.network.borrow().clone() else { return };
        for b in self.boards.iter().filter(|b| b.session.is_some()) {
            assert_eq!(b.services(), &view.services, "{}'s services and endpoints", b.name);
            let Some(rules) = b.net.rules() else {
                assert!(view.services.is_empty(), "{} has services but no nft table", b.name);
                continue;
            };
            let mut wanted = BTreeMap::new();
            for s in view.services.values() {
                for p in &s.ports {
                    let ready: Vec<_> = s.ready().map(|e| (e.ip, p.target)).collect();
                    wanted.insert((s.vip, p.protocol, p.port), ready);
                }
            }
            assert_eq!(rules.ports, wanted, "{}'s nft table: each virtual port to its ready endpoints", b.name);
        }
    }

    /// Containers of `image` run but never pass readiness, on every board.
    pub fn never_ready(&self, image: &str) {
        for b in &self.boards {
            b.containers.never_ready(image);
        }
    }

    /// The app's revision records, oldest first.
    pub fn history(&self, app: &str) -> Vec<bramble_proto::model::RevisionRecord> {
        self.objects().history(app).expect("history").into_iter().map(|v| v.value).collect()
    }

    /// `image` offers only these platforms (boards of other archs cannot pull it).
    pub fn restrict(&mut self, image: &str, platforms: &[&str]) {
        let list: Vec<Platform> = platforms.iter().map(|p| p.parse().expect("platform")).collect();
        for b in &self.boards {
            b.images.offer(image, list.clone());
        }
        self.offered.insert(image.into(), list);
    }

    /// Tells the leader what `image` offers, as if every board had said so already.
    pub fn leader_knows(&self, image: &str) {
        if let Some(list) = self.offered.get(image) {
            for b in &self.boards {
                self.objects().learn_platforms(image, &b.name, list, self.now_ms()).expect("stored");
            }
        }
    }

    pub fn board(&self, name: &str) -> &Board {
        self.boards.iter().find(|b| b.name == name).expect("a board of the sim")
    }

    fn board_mut(&mut self, name: &str) -> &mut Board {
        self.boards.iter_mut().find(|b| b.name == name).expect("a board of the sim")
    }

    /// Cuts `board` off from the leader (its agent and containers go on).
    pub fn partition(&mut self, board: &str) {
        let b = self.board_mut(board);
        b.partitioned = true;
        b.session = None;
    }

    pub fn heal(&mut self, board: &str) {
        self.board_mut(board).partitioned = false;
    }

    /// The process of `replica`'s container on `board` exits with code 1.
    pub fn crash(&self, board: &str, replica: &str) -> bool {
        self.board(board).containers.crash(replica, 1)
    }

    /// Kills and restarts the agent of `board` (containers keep running).
    pub fn restart_agent(&mut self, board: &str) {
        let b = self.board_mut(board);
        b.agent = None;
        b.session = None;
        b.jobs.clear();
        b.start_agent();
        // Its network controller too: from `network.json`, before any word from the leader.
        let (net, applied, rules) = network_controller(b.dir.path(), &b.kernel);
        (b.net, b.net_applied, b._pod_rules) = (net, applied, rules);
        b.net.turn(false, true);
    }

    /// Stops the leader (its memory is lost; the store stays).
    pub fn stop_leader(&mut self) {
        self.leader = None;
        self.published = None;
        for b in &mut self.boards {
            b.session = None;
        }
    }

    pub fn start_leader(&mut self) {
        if self.leader.is_none() {
            self.leader = Some(new_leader(&self.store));
        }
    }

    /// `board`'s certificate is due for renewal now (two thirds of its life have passed).
    pub fn certificate_due(&mut self, board: &str) {
        let now = self.now_ms();
        self.board_mut(board).renew_at = Some(now);
    }

    /// Whether `board` has a renewal request on its way to the leader.
    pub fn renewal_in_flight(&self, board: &str) -> bool {
        self.board(board).session.as_ref().is_some_and(|s| s.renewal.is_some())
    }

    /// The leader is restored (without `--prune`) from a backup taken before `apps` were applied:
    /// they, their replicas and revisions are not in it. It starts holding sets back.
    pub fn restore_without(&mut self, apps: &[&str]) {
        self.stop_leader();
        let objects = self.objects();
        for app in apps {
            let mut ops = vec![Objects::delete_op::<bramble_proto::model::App>(app, Expect::Any)];
            for r in objects.list::<Replica>().expect("replicas").into_iter().filter(|r| r.value.app == *app) {
                ops.push(Objects::delete_op::<Replica>(&r.value.meta.name, Expect::Any));
            }
            objects.txn(&ops).expect("the backup's store");
        }
        let marker = bramble_leader::objects::keys::RESTORED;
        self.store.put(marker, b"restored", Expect::Any).expect("the restore's marker");
        self.start_leader();
    }

    /// Whether the leader holds sets back after a restore.
    pub fn restoring(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.restored.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn restart_leader(&mut self) {
        self.stop_leader();
        self.start_leader();
    }

    /// Moves time on by `dt` and runs one tick of every loop.
    pub fn step(&mut self, dt: Duration) {
        self.clock.advance(dt);
        let now = self.clock.now_ms();
        for b in &mut self.boards {
            b.containers.tick();
            b.agent_pass(now);
        }
        let Some(leader) = &self.leader else { return };
        let ctx = leader.ctx.clone();
        let instant = self.clock.instant();
        for b in &mut self.boards {
            b.talk_up(&ctx, &self.ca, instant, now);
        }
        // A session the board no longer has ends at the leader as its silence watch does: that
        // long after the leader last heard from it (a loss: it counts for damping).
        let idle = bramble_transport::quic::SESSION_SILENCE.as_millis() as u64;
        for b in &self.boards {
            let v = ctx.registry.view(&b.name, now);
            if let Some(epoch) = v.session_epoch {
                let live = b.session.as_ref().map(|s| s.epoch);
                if live != Some(epoch) && now.saturating_sub(v.last_seen_ms) >= idle {
                    ctx.registry.disconnect(&b.name, epoch, "timed out", true, instant, now);
                }
            }
        }
        let names: Vec<String> = self.boards.iter().map(|b| b.name.clone()).collect();
        ctx.registry.check(names, instant, now);
        bramble_leader::backup::release_once(&ctx.objects, &ctx.registry, &leader.restored, &ctx.events, now)
            .expect("the restore hold-back's look");
        let restoring = leader.restored.load(std::sync::atomic::Ordering::Relaxed);
        let out = run::pass(&ctx, now).expect("a controller pass");
        let sets = out.desired.clone();
        // (The view goes down through each board's session, which confirms what it applied.)
        run::publish(&ctx, &leader.bus, out);
        let view = leader.bus.network.borrow().clone();
        for b in &mut self.boards {
            b.talk_down(&ctx, view.as_ref(), &sets, restoring, now);
            // A board applies the network view at once (the fakes have no kernel), unless muted.
            if !self.muted.contains(&b.name) {
                b.confirm_view(&ctx);
            }
        }
        self.published = Some(sets);
    }

    /// Steps of one second, `n` times.
    pub fn run_for(&mut self, n: usize) {
        for _ in 0..n {
            self.step(Duration::from_secs(1));
        }
    }

    /// Steps of one second until `done` holds (at most `max` steps); returns the steps taken.
    pub fn run_until(&mut self, max: usize, mut done: impl FnMut(&Sim) -> bool) -> Option<usize> {
        for i in 0..=max {
            if done(self) {
                return Some(i);
            }
            self.step(Duration::from_secs(1));
        }
        None
    }

    pub fn replicas(&self, app: &str) -> Vec<Replica> {
        self.objects()
            .list::<Replica>()
            .expect("replicas")
            .into_iter()
            .map(|v| v.value)
            .filter(|r| r.app == app)
            .collect()
    }

    /// Containers per board: board → replica → pid (if it runs).
    pub fn containers(&self) -> BTreeMap<String, BTreeMap<String, Option<i32>>> {
        self.boards.iter().map(|b| (b.name.clone(), b.containers.running())).collect()
    }

    /// Every start and removal the boards' agents asked for, per board.
    pub fn calls(&self) -> BTreeMap<String, Vec<Call>> {
        self.boards.iter().map(|b| (b.name.clone(), b.containers.calls())).collect()
    }

    pub fn clear_calls(&self) {
        for b in &self.boards {
            b.containers.clear_calls();
        }
    }

    /// Invariant: no replica has a container on two boards at once.
    pub fn check_no_duplicates(&self) {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (board, list) in self.containers() {
            for id in list.keys() {
                if let Some(other) = seen.insert(id.clone(), board.clone()) {
                    panic!("replica {id} has a container on {other} and on {board}");
                }
            }
        }
    }

    /// Invariant: no replica is bound to a board whose arch its image does not offer.
    pub fn check_bindings(&self) {
        for r in self.objects().list::<Replica>().expect("replicas").into_iter().map(|v| v.value) {
            let Some(node) = &r.node else { continue };
            let image = self.spec(&r.app).image.to_string();
            let Some(offered) = self.offered.get(&image) else { continue };
            let arch = &self.board(node).arch;
            assert!(
                Platform::choose(offered, arch).is_some(),
                "{} of {image} is bound to {node} ({arch})",
                r.meta.name
            );
        }
    }

    /// Whether the cluster has settled: every app has its count of Running replicas of its
    /// current revision, and every board runs exactly what is bound to it.
    pub fn converged(&self) -> bool {
        let objects = self.objects();
        let apps = objects.list::<bramble_proto::model::App>().expect("apps");
        let replicas: Vec<Replica> =
            objects.list::<Replica>().expect("replicas").into_iter().map(|v| v.value).collect();
        for a in &apps {
            let spec = &a.value.spec;
            let rev = bramble_leader::controllers::replicas::revision_hash(spec);
            let mine: Vec<&Replica> = replicas.iter().filter(|r| r.app == spec.name.as_str()).collect();
            let want = if spec.every_board() {
                // One on each board it matches (these scenarios use labels alone), all up.
                self.boards.iter().filter(|b| !b.partitioned && self.board_matches(&objects, &b.name, spec)).count()
            } else {
                spec.replicas.0 as usize
            };
            let ok = mine.len() == want
                && mine.iter().all(|r| r.phase == ReplicaPhase::Running && r.serving() && r.revision_hash == rev);
            if !ok {
                return false;
            }
        }
        let containers = self.containers();
        for b in &self.boards {
            let bound: BTreeSet<&str> =
                replicas.iter().filter(|r| r.node.as_deref() == Some(&b.name)).map(|r| r.meta.name.as_str()).collect();
            let running: BTreeSet<&str> = containers[&b.name].keys().map(String::as_str).collect();
            if bound != running {
                return false;
            }
        }
        true
    }
}

impl Sim {
    /// Whether board `name`'s labels match `spec`'s node selector.
    fn board_matches(&self, objects: &Objects, name: &str, spec: &AppSpec) -> bool {
        let Ok(node) = objects.load::<bramble_proto::model::Node>(name) else { return false };
        let labels = node.value.effective_labels();
        spec.placement.node_selector.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Every board runs at most one replica of every-board app `app`, and none is bound twice.
    pub fn check_every_board(&self, app: &str) {
        let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.replicas(app).into_iter().filter(|r| r.phase != ReplicaPhase::Lost) {
            if let Some(n) = r.node.clone() {
                on.entry(n).or_default().push(r.meta.name);
            }
        }
        for (board, rs) in on {
            assert!(rs.len() <= 1, "{app} has {} replicas bound to {board}: {rs:?}", rs.len());
        }
    }
}

impl Board {
    fn start_agent(&mut self) {
        let r = Reconciler::new(
            self.containers.clone(),
            self.images.clone(),
            self.network.clone(),
            Some(self.dir.path().to_path_buf()),
        )
        .with_parallel_starts(1);
        self.agent = Some(r);
    }

    /// Background jobs of the last pass end now; then a pass.
    fn agent_pass(&mut self, now: u64) {
        let Some(agent) = self.agent.as_mut() else { return };
        for job in std::mem::take(&mut self.jobs) {
            let input = match job {
                Job::Pull { image, progress } => {
                    let result = self.images.pull(&image, &progress);
                    Input::Pulled { image: image.to_string(), result, took_ms: 1 }
                }
                Job::Remove { id } => {
                    let result = self.containers.remove(&id).and_then(|()| self.network.release(&id));
                    Input::Removed { result, id }
                }
                Job::Stop { id, grace } => {
                    let result = self.containers.stop(&id, grace);
                    Input::Stopped { result, id }
                }
                Job::Reload { id, config, args } => {
                    let result = self.containers.exec(&id, args, std::time::Duration::from_secs(15));
                    Input::Reloaded { id, config, result }
                }
            };
            agent.input(input, now);
        }
        self.jobs = agent.pass(now);
    }

    /// Session start, heartbeat (with a renewal when due), statuses and events up; the answer to
    /// the renewal asked in the step before.
    fn talk_up(&mut self, ctx: &Context, ca: &bramble_transport::pki::Ca, instant: std::time::Instant, now: u64) {
        let Some(agent) = self.agent.as_mut() else {
            self.session = None;
            return;
        };
        if self.partitioned {
            return;
        }
        if self.session.is_none() {
            self.epoch += 1;
            let s = Session { epoch: self.epoch, address: format!("{}:1", self.name), connection: None };
            if ctx.registry.connect(&self.name, s, instant, now).is_err() {
                return;
            }
            self.session = Some(SimSession {
                epoch: self.epoch,
                leader: LeaderSession::new(&self.name),
                agent: AgentSession::new(true),
                renewal: None,
            });
        }
        let session = self.session.as_mut().expect("set above");
        ctx.registry.heartbeat(&self.name, session.epoch, instant, now);
        if let Some(csr) = session.renewal.take() {
            let lifetime = bramble_transport::pki::NODE_VALIDITY;
            let reply =
                match bramble_leader::sessions::renew(ca, &ctx.objects, &ctx.events, lifetime, &self.name, &csr, now) {
                    Ok(cert) => LeaderMsg::Renewed { cert_pem: Some(cert), error: None },
                    Err(e) => LeaderMsg::Renewed { cert_pem: None, error: Some(e.to_string()) },
                };
            for o in session.agent.from_leader(reply).expect("the agent takes a renewal's answer") {
                if let Output::Renewed { cert_pem, .. } = o {
                    let der = bramble_transport::pki::cert_der_from_pem(&cert_pem).expect("a certificate");
                    self.renew_at = Some(bramble_transport::pki::renew_at_ms(&der).expect("its validity"));
                    self.renewed.push(cert_pem);
                }
            }
        }
        let name = self.name.clone();
        let csr = || bramble_transport::pki::node_csr(&name).map_err(|e| e.to_string());
        for msg in session.agent.tick(now, self.renew_at, csr) {
            if let AgentMsg::Renew { csr_pem } = msg {
                session.renewal = Some(csr_pem);
            }
        }
        let images = agent.images();
        let statuses = agent.statuses().clone();
        for msg in session.agent.report(&images, &[], &statuses) {
            match msg {
                AgentMsg::Status { replicas, .. } => {
                    bramble_leader::sessions::reports::statuses(ctx, &self.name, replicas, now);
                }
                AgentMsg::Images(list) => bramble_leader::sessions::reports::images(ctx, &self.name, list),
                _ => {}
            }
        }
        for e in agent.take_events() {
            bramble_leader::sessions::reports::event(ctx, &self.name, e);
        }
    }

    /// What the leader's session sends now, through the agent's session into the board.
    fn talk_down(
        &mut self,
        ctx: &Context,
        view: Option<&std::sync::Arc<bramble_leader::network::view::NetworkView>>,
        sets: &DesiredSets,
        restoring: bool,
        now: u64,
    ) {
        let (Some(agent), Some(session)) = (self.agent.as_mut(), self.session.as_mut()) else { return };
        let set = sets.get(&self.name).cloned().unwrap_or_default();
        let objects = &ctx.objects;
        // The sim keeps no values: versions are what the rules are about.
        let load = |kind: Payload, name: &str| -> Result<_, String> {
            Ok(match kind {
                Payload::Secrets => objects
                    .get::<bramble_leader::trust::secrets::StoredSecret>(name)
                    .map_err(|e| e.to_string())?
                    .map(|v| (v.value.version, BTreeMap::new())),
                Payload::Configs => objects
                    .get::<bramble_proto::model::Config>(name)
                    .map_err(|e| e.to_string())?
                    .map(|v| (v.value.meta.generation, BTreeMap::new())),
                Payload::Registries => objects
                    .list::<bramble_proto::model::Registry>()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|v| v.value.spec.host == name)
                    .map(|v| (v.value.meta.generation, BTreeMap::new())),
            })
        };
        let mut network = false;
        for msg in session.leader.poll(view, Some(set), restoring, load) {
            let outputs = session.agent.from_leader(msg).expect("the leader's session sends what the agent's takes");
            for o in outputs {
                match o {
                    Output::Desired { full, upsert, remove } => {
                        agent.input(Input::Desired { full, upsert, remove }, now)
                    }
                    Output::Network(input) => {
                        self.net.input(input);
                        network = true;
                    }
                    Output::Secrets { put, drop, full } => apply(&mut self.secrets, put, &drop, full),
                    Output::Configs { put, drop, full } => apply(&mut self.configs, put, &drop, full),
                    Output::Registries { put, drop, full } => apply(&mut self.registries, put, &drop, full),
                    Output::Renewed { .. } => {}
                }
            }
        }
        // The network thread's turn: what the leader said goes into the (fake) kernel.
        self.net.turn(network, false);
    }

    /// The board says it applied the latest view its network controller put in the kernel (once
    /// per view).
    fn confirm_view(&mut self, ctx: &Context) {
        let Some(session) = self.session.as_mut() else { return };
        let applied = *self.net_applied.borrow();
        if let Some(AgentMsg::NetworkApplied { version }) = session.agent.network_applied(applied) {
            ctx.drain.applied(&self.name, version);
        }
    }

    /// The services (with their endpoints) the board's network was told, as its network
    /// controller keeps them (across sessions and agent restarts, in `network.json`).
    pub fn services(&self) -> &BTreeMap<String, bramble_proto::network::ServiceRoute> {
        self.net.services()
    }
}

fn apply(
    held: &mut BTreeMap<String, u64>,
    put: bramble_agent::session::machine::Payloads,
    drop: &[String],
    full: bool,
) {
    if full {
        held.retain(|n, _| put.iter().any(|(p, _, _)| p == n));
    }
    for (name, version, _) in put {
        held.insert(name, version);
    }
    for d in drop {
        held.remove(d);
    }
}
