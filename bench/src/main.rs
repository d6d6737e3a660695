//! `bramble-bench`: figures measured side by side with a peer in the same run, printed as a table
//! and written as JSON to `target/bench/`. Nothing here is a test assertion.
//!
//!   cargo build --release --bins && target/release/bramble-bench images [--runs 10]

mod agent;
mod apps;
mod containers;
mod cron;
mod drain;
mod ha;
mod images;
mod ingress;
mod monitoring;
mod net;
mod peers;
mod rollout;
mod scale;
mod scheduler;
mod secrets;
mod startup;
mod stats;
mod users;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bramble-bench", about = "Bramble's figures, side by side with peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull + unpack against skopeo copy + umoci unpack; peak memory pulling a 100 MiB layer.
    Images {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Container start (request → process running) against `runc run -d` on the same bundle;
    /// shim memory per container.
    Containers {
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Placements per second: 10,000 replicas on 1,000 simulated nodes, pure and committed.
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        replicas: usize,
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
    },
    /// Apply -> all replicas Running (1, 10, 100 on one board, cached image); node loss ->
    /// replacement Running; a board whose link flaps. A real cluster in network namespaces.
    Apps {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Node losses measured; 0: none (the apply figures alone).
        #[arg(long, default_value_t = 5)]
        loss_runs: usize,
        /// How long one board's link flaps (down 2 s every 10 s); 0: not measured.
        #[arg(long, default_value_t = 60)]
        flap_secs: u64,
    },
    /// A leader with many simulated boards (the real protocol, no containers): memory, apply ->
    /// all Running, and the leader's writes while steady.
    Scale {
        #[arg(long, default_value_t = 50)]
        agents: usize,
        #[arg(long, default_value_t = 1_000)]
        replicas: usize,
        /// How long to measure writes in the steady state.
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
        /// How often each simulated board sends usage (a real agent: every 15 s by default).
        #[arg(long, default_value_t = 1)]
        usage_secs: u64,
        /// The simulated boards do not say `peer_deltas`, as agents from before them: each is
        /// sent its whole list of peers whenever one changes (to compare).
        #[arg(long)]
        whole_peers: bool,
    },
    /// The agent's memory idle and with containers (each container's cost, shim included) and
    /// its writes per day.
    Agent {
        #[arg(long, default_value_t = 20)]
        containers: usize,
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
    },
    /// Process start -> ready (leader serving, agent session up), and binary sizes.
    Startup {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The network: endpoint propagation, nft rule sync (100 services x 10 endpoints), iperf3 pod
    /// to pod vs board to board and VIP vs pod, host port requests/s vs the old userspace forwarder.
    Net {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Images shared by the boards: a rollout of a large image to N boards at once, sharing
    /// (the default) against each board pulling from the registry: uplink bytes, time, agent RSS.
    Peers {
        /// Board counts to measure (real agents in namespaces).
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        boards: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        size_mib: usize,
        /// The registry's link, in Mbit/s (0: as fast as the lab goes).
        #[arg(long, default_value_t = 0)]
        uplink_mbit: u64,
    },
    /// The ingress proxy: requests/s and p99 through it vs the backend's VIP and a pod directly,
    /// the proxy's memory, an ingress change -> served.
    Ingress {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Rolling updates with readiness probes (apply -> complete, beside Ankaios' published
    /// figure) and failed requests under load; apply -> ready for 1 and 10; the cost of probes.
    Rollout {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// `bramble drain` of a board with 10 replicas of 3 apps vs losing that board; an every-board
    /// rollout across 3 boards vs a 3-replica one.
    Drain {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Secret update -> the new value in a running container's file.
    Secrets {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The cost of monitoring on a board: sampling time, session bytes.
    Monitoring {
        #[arg(long, default_value_t = 20)]
        replicas: usize,
    },
    /// The revocation check on every connection vs the connection itself.
    Revocation {
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Highly available leaders on etcd: failover time, apply -> Running on etcd vs redb, steady
    /// writes on etcd vs redb.
    Ha {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 60)]
        steady_secs: u64,
    },
    /// The leader's cost of cron jobs: its pass with 1,000 of them (none due, all due) beside
    /// the replica controller's pass over the same store; store bytes and RSS.
    Cron {
        #[arg(long, default_value_t = 1_000)]
        cronjobs: usize,
        #[arg(long, default_value_t = 50)]
        passes: usize,
    },
    /// Every benchmark.
    All {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

fn main() {
    // Release builds abort on a panic: no Drop runs, so what the run started is reaped here.
    bramble_tests::reaper::install_panic_hook();
    let cli = Cli::parse();
    let results = match cli.command {
        Command::Images { runs } => vec![("images", images::run(runs))],
        Command::Containers { runs } => vec![("containers", containers::run(runs))],
        Command::Scheduler { replicas, nodes } => vec![("scheduler", scheduler::run(nodes, replicas))],
        Command::Cron { cronjobs, passes } => vec![("cron", cron::run(cronjobs, passes))],
        Command::Apps { runs, loss_runs, flap_secs } => vec![("apps", apps::run(runs, loss_runs, flap_secs))],
        Command::Startup { runs } => vec![("startup", startup::run(runs))],
        Command::Net { runs } => vec![("net", net::run(runs))],
        Command::Ingress { runs } => vec![("ingress", ingress::run(runs))],
        Command::Peers { boards, size_mib, uplink_mbit } => vec![("peers", peers::run(&boards, size_mib, uplink_mbit))],
        Command::Rollout { runs } => vec![("rollout", rollout::run(runs))],
        Command::Secrets { runs } => vec![("secrets", secrets::run(runs))],
        Command::Drain { runs } => vec![("drain", drain::run(runs))],
        Command::Revocation { runs } => vec![("revocation", users::run(runs))],
        Command::Monitoring { replicas } => vec![("monitoring", monitoring::run(replicas))],
        Command::Ha { runs, steady_secs } => vec![("ha", ha::run(runs, steady_secs))],
        Command::Agent { containers, steady_secs } => vec![("agent", agent::run(containers, steady_secs))],
        Command::Scale { agents, replicas, steady_secs, usage_secs, whole_peers } => {
            vec![("scale", scale::run(agents, replicas, steady_secs, usage_secs, whole_peers))]
        }
        Command::All { runs } => vec![
            ("images", images::run(runs)),
            ("containers", containers::run(runs.max(50))),
            ("scheduler", scheduler::run(1_000, 10_000)),
            ("cron", cron::run(1_000, 50)),
            ("apps", apps::run(runs.max(20), 5, 60)),
            ("scale", scale::run(50, 1_000, 60, 1, false)),
            ("agent", agent::run(20, 60)),
            ("startup", startup::run(runs.max(20))),
            ("net", net::run(runs)),
            ("ingress", ingress::run(runs)),
            ("peers", peers::run(&[1, 3], 100, 0)),
            ("rollout", rollout::run(runs)),
            ("drain", drain::run(runs.min(5))),
            ("secrets", secrets::run(runs.max(20))),
            ("revocation", users::run(runs.max(50))),
            ("monitoring", monitoring::run(20)),
            ("ha", ha::run(runs, 60)),
        ],
    };
    let dir = bramble_tests::testimages::assets_dir().parent().expect("target dir").join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    for (name, json) in results {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write results");
        println!("wrote {}", path.display());
    }
}
