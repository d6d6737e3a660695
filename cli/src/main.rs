//! `bramble`: drive a Bramble cluster.

mod client;
mod cmd;
mod contexts;
mod convert;
mod diff;
mod error;
mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bramble", version, about = "Drive a Bramble cluster")]
struct Cli {
    /// The CLI config (default: $BRAMBLE_CONFIG, then ~/.config/bramble/config.toml).
    #[arg(long, global = true, env = "BRAMBLE_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster to talk to, when the config lists several (`bramble config get-contexts`).
    #[arg(long, global = true, env = "BRAMBLE_CONTEXT")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update apps and services from TOML manifests: `bramble apply -f app.toml`.
    Apply(cmd::apply::Args),
    /// What applying manifests would change, as a diff per object: exit 0 none, 1 some.
    Diff(cmd::diff::Args),
    /// Print Bramble manifests for a Compose file: `bramble convert -f docker-compose.yml` (what does
    /// not map is listed with file:line; `apply -f compose.yml` converts on the fly).
    Convert(convert::Args),
    /// Delete apps, services or nodes: `bramble delete app NAME`, `delete node NAME`, `delete -f app.toml`.
    Delete(cmd::delete::Args),
    /// List objects: `bramble get nodes|apps|replicas|services`.
    Get(cmd::get::Args),
    /// Show one object in detail: `bramble describe node|app|replica|service NAME`.
    Describe(cmd::describe::Args),
    /// A replica's output: `bramble logs REPLICA|app/NAME [-f] [--tail N] [--since 10m]`.
    Logs(cmd::logs::Args),
    /// Set an app's replica count: `bramble scale app NAME --replicas N`.
    Scale(cmd::scale::Args),
    /// Jobs: `bramble job run NAME --from cronjob/NAME` runs a cron job's job at once.
    Job(cmd::job::Args),
    /// Run a command in a running replica: `bramble exec web-1-abcde -it -- sh` (exit code passed through).
    Exec(cmd::exec::Args),
    /// Follow, list, undo or restart rollouts: `bramble rollout status app/NAME --timeout 5m`.
    Rollout(cmd::rollout::Args),
    /// What boards and replicas use, with the last minutes: `bramble top nodes`, `top replicas --app web`.
    Top(cmd::top::Args),
    /// What happened in the cluster: `bramble events [-w]`.
    Events(cmd::events::Args),
    /// A node's image store through the leader: `bramble image ls|rm|import --node NODE`.
    Image(cmd::image::Args),
    /// Set (`k=v`) or remove (`k-`) labels: `bramble label node NAME k=v k2-`.
    Label(cmd::label::Args),
    /// Stop placing new replicas on a node.
    Cordon(cmd::cordon::Args),
    /// Allow new replicas on a node again (and stop a drain).
    Uncordon(cmd::cordon::Args),
    /// Cordon a node and move its replicas away one app at a time, each new copy ready before the
    /// old one stops and never below an app's min_available: `bramble drain pi-2 --timeout 5m`.
    Drain(cmd::drain::Args),
    /// What an admin lets deployers ask for in one app: `bramble policy allow zigbee --cap-add NET_ADMIN`, `ls`, `rm`.
    Policy(cmd::policy::Args),
    /// Secrets (write-only): `bramble secret create db --from-literal password=… --from-file tls.key=PATH`.
    Secret(cmd::secret::Args),
    /// Configs (files apps mount): `bramble config create nginx --from-file nginx.conf=./nginx.conf`;
    /// and the CLI's own clusters: `bramble config get-contexts|use-context NAME|add-context NAME --from FILE`.
    Config(cmd::configcmd::Args),
    /// A sealed backup of the whole cluster (admins): `bramble backup --out FILE --passphrase-file P`, `backup inspect FILE`.
    Backup(cmd::backup::Args),
    /// Join tokens for new agents: `bramble token create|ls|revoke`.
    Token(cmd::token::Args),
    /// People and pipelines: `bramble user create ci --role deployer --ttl 30d --out ci.toml`, `user ls`, `user revoke NAME`.
    User(cmd::user::Args),
    /// Local volumes on the boards: `bramble volume ls [--node NODE]`, `volume rm NAME --node NODE`.
    Volume(cmd::volume::Args),
    /// A shell's completion script: `source <(bramble completion bash)`; also zsh and fish.
    Completion(cmd::shell::CompletionArgs),
    /// Write the man pages (`bramble.1`, `bramble-get.1`, …): `bramble man --out DIR`.
    Man(cmd::shell::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    contexts::choose(cli.context.clone());
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bramble: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let config = cli.config;
        match cli.command {
            Command::Apply(a) => cmd::apply::run(config, a).await,
            Command::Diff(a) => cmd::diff::run(config, a).await,
            Command::Convert(a) => convert::run(a).await,
            Command::Delete(a) => cmd::delete::run(config, a).await,
            Command::Get(a) => cmd::get::run(config, a).await,
            Command::Describe(a) => cmd::describe::run(config, a).await,
            Command::Logs(a) => cmd::logs::run(config, a).await,
            Command::Scale(a) => cmd::scale::run(config, a).await,
            Command::Rollout(a) => cmd::rollout::run(config, a).await,
            Command::Exec(a) => cmd::exec::run(config, a).await,
            Command::Job(a) => cmd::job::run(config, a).await,
            Command::Events(a) => cmd::events::run(config, a).await,
            Command::Top(a) => cmd::top::run(config, a).await,
            Command::Image(a) => cmd::image::run(config, a).await,
            Command::Label(a) => cmd::label::run(config, a).await,
            Command::Cordon(a) => cmd::cordon::run(config, a, true).await,
            Command::Uncordon(a) => cmd::cordon::run(config, a, false).await,
            Command::Drain(a) => cmd::drain::run(config, a).await,
            Command::Policy(a) => cmd::policy::run(config, a).await,
            Command::Token(a) => cmd::token::run(config, a).await,
            Command::Secret(a) => cmd::secret::run(config, a).await,
            Command::Volume(a) => cmd::volume::run(config, a).await,
            Command::Backup(a) => cmd::backup::run(config, a).await,
            Command::Config(a) => cmd::configcmd::run(config, a).await,
            Command::User(a) => cmd::user::run(config, a).await,
            Command::Completion(a) => cmd::shell::completion(cmd::shell::command::<Cli>(), a),
            Command::Man(a) => cmd::shell::man(cmd::shell::command::<Cli>(), a),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(crate::client::CliError::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("bramble: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
