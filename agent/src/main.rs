//! `bramble-agent`: runs on every board.

mod image_cmd;

use anyhow::Context;
use bramble_agent::config::{AgentConfig, Overrides};
use bramble_daemon::{observability, systemd};
use bramble_proto::report::Report;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "bramble-agent", version, about = "The Bramble agent: runs workloads on one board")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the cluster (first run) and keep a session with the leader.
    Run(RunArgs),
    /// Check this board and the configuration: kernel, cgroups (v1 or v2, and the Raspberry Pi's
    /// memory flag), namespaces, overlayfs in the data dir, seccomp, disk space and inodes, clock,
    /// memory, and what pod networking needs (bridge, veth, vxlan, nf_tables). Prints the config as
    /// `run` would use it (the token redacted) with the findings as comments, each problem with
    /// its fix. Exits 2 when the board cannot run containers.
    Check {
        #[command(flatten)]
        args: RunArgs,
        /// `json`: {"config": …, "findings": [{"section", "what", "required", "ok", "detail"}], "ok"}.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// This board's image store: pull, import, ls, rm, prune.
    Image {
        #[command(flatten)]
        args: RunArgs,
        #[command(subcommand)]
        command: image_cmd::ImageCommand,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file (e.g. /etc/bramble/agent.toml).
    #[arg(long, short, env = "BRAMBLE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// A leader address (host:port); repeat for several. With none here or in the config, the
    /// board finds its cluster's leaders on the LAN (mDNS `_bramble._udp`; the token's CA pin,
    /// or the CA it has, decides which answers count).
    #[arg(long = "leader", env = "BRAMBLE_AGENT_LEADER", value_delimiter = ',')]
    leaders: Vec<String>,
    /// A join token, needed on the first run only.
    #[arg(long, env = "BRAMBLE_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node name (default: the host name).
    #[arg(long, env = "BRAMBLE_AGENT_NAME")]
    name: Option<String>,
    /// Where the agent keeps its identity and state.
    #[arg(long, env = "BRAMBLE_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Exit codes systemd and scripts can tell apart.
const EXIT_CONFIG: u8 = 2;
const EXIT_JOIN: u8 = 3;
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    bramble_daemon::alloc::limit_arenas();
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Command::Run(a) => (a, None),
        Command::Check { args, output } => (args, Some(output)),
        Command::Image { args, command } => {
            let config = match load(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bramble-agent: {}", Report(e.as_ref()));
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            observability::init(Some(config.log.level.as_deref().unwrap_or("warn")));
            return match image_cmd::run(&config, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bramble-agent: {}", Report(e.as_ref()));
                    ExitCode::from(EXIT_RUNTIME)
                }
            };
        }
    };
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bramble-agent: {}", Report(e.as_ref()));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(output) = check_only {
        return check(config, output);
    }
    bramble_daemon::alloc::no_huge_pages();
    let nofile = bramble_daemon::hardening::harden();
    observability::init(config.log.level.as_deref());
    tracing::debug!(nofile, "no core dumps; open files up to the hard limit");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bramble-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = rt.block_on(async {
        let mut shutdown = match bramble_daemon::signals::Shutdown::install() {
            Ok(s) => s,
            Err(e) => return Err(bramble_agent::AgentError::Io { path: "signal handlers".into(), source: e }),
        };
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            systemd::notify("STOPPING=1");
            c.cancel();
        });
        bramble_agent::run(config, cancel, || systemd::notify("READY=1")).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("bramble-agent: {e}");
            ExitCode::from(match e {
                bramble_agent::AgentError::Join(_) => EXIT_JOIN,
                bramble_agent::AgentError::Config(_) | bramble_agent::AgentError::NoLeader => EXIT_CONFIG,
                _ => EXIT_RUNTIME,
            })
        }
    }
}

/// `bramble-agent check`: the config as `run` would use it and what the board offers.
fn check(config: AgentConfig, output: Output) -> ExitCode {
    let mut shown = config.clone();
    if shown.token.is_some() {
        shown.token = Some("<redacted>".into());
    }
    let sections = [
        ("this board", bramble_agent::doctor::board(&config.data_dir)),
        ("pod networking", bramble_agent::net::check::network()),
    ];
    let blocking = sections.iter().flat_map(|(_, f)| f).any(|f| !f.ok && f.required);
    match output {
        Output::Json => {
            let findings: Vec<serde_json::Value> = sections
                .iter()
                .flat_map(|(section, findings)| {
                    findings.iter().map(move |f| {
                        serde_json::json!({
                            "section": section, "what": f.what, "required": f.required, "ok": f.ok, "detail": f.detail,
                        })
                    })
                })
                .collect();
            let doc = serde_json::json!({ "config": shown, "findings": findings, "ok": !blocking });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Output::Text => {
            match toml::to_string(&shown) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("bramble-agent: cannot print the config: {e}"),
            }
            // The findings as TOML comments: the output stays a valid agent.toml.
            for (section, findings) in &sections {
                println!("\n# {section}:");
                for f in findings {
                    let verdict = match (f.ok, f.required) {
                        (true, _) => "ok",
                        (false, true) => "MISSING",
                        (false, false) => "warning",
                    };
                    println!("#   {verdict:<7} {:<46} {}", f.what, f.detail);
                }
            }
            println!(
                "\n# {}",
                if blocking {
                    "this board cannot run containers: fix what is MISSING above"
                } else {
                    "this board can run containers"
                }
            );
        }
    }
    if blocking {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

fn load(args: RunArgs) -> anyhow::Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    config.apply(Overrides { leaders: args.leaders, token: args.token, name: args.name, data_dir: args.data_dir });
    config.node_name().context("invalid node name")?;
    Ok(config)
}
