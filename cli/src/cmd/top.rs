//! `bramble top nodes` and `bramble top replicas [--app NAME]`: what boards and replicas use now,
//! against what they ask for and have, with the last minutes as a sparkline. Kept in the leader's
//! memory (sampled every 15 s by default), so right after a leader restart there is little.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, sparkline, table, Format};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    what: What,
    /// Only this app's replicas (with `top replicas`).
    #[arg(long)]
    app: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "replica", alias = "rs")]
    Replicas,
}

/// `part` of `whole` in percent, or `-` without a whole.
fn pct(part: u64, whole: u64) -> String {
    (part * 100).checked_div(whole).map_or("-".into(), |p| format!("{p}%"))
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let (nodes, replicas) = match request(config, Request::Top { app: args.app.clone() }).await? {
        Response::Top { nodes, replicas } => (nodes, replicas),
        r => return Err(unexpected(&r)),
    };
    match args.what {
        What::Nodes => {
            if args.output == Format::Json {
                print!("{}", json(&nodes));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let capacity = u64::from(n.cpus) * 1000;
                    vec![
                        n.node.clone(),
                        format!("{}m", n.cpu_millis),
                        pct(n.cpu_millis, capacity),
                        format!("{}m/{}m", n.requested_cpu_millis, n.allocatable_cpu_millis),
                        human_bytes(n.memory_used),
                        pct(n.memory_used, n.memory_total),
                        format!("{:.2}", n.load1_milli as f64 / 1000.0),
                        n.temperature_mc.map_or("-".into(), |t| format!("{:.1}°C", t as f64 / 1000.0)),
                        n.throttled.map_or("-".into(), |t| if t == 0 { "no".into() } else { format!("{t:#x}") }),
                        human_bytes(n.disk_free),
                        sparkline(&n.cpu_history, 20, capacity),
                    ]
                })
                .collect();
            let header = [
                "NAME",
                "CPU",
                "CPU%",
                "REQUESTED",
                "MEMORY",
                "MEM%",
                "LOAD",
                "TEMP",
                "THROTTLED",
                "DISK FREE",
                "CPU (15m)",
            ];
            print!("{}", table(&header, &rows));
        }
        What::Replicas => {
            if args.output == Format::Json {
                print!("{}", json(&replicas));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = replicas
                .iter()
                .map(|r| {
                    let cpu = match r.cpu_request_millis {
                        Some(req) => format!("{}m/{req}m", r.cpu_millis),
                        None => format!("{}m", r.cpu_millis),
                    };
                    let mem = match r.memory_limit.or(r.memory_request) {
                        Some(l) => format!("{}/{}", human_bytes(r.memory_working_set), human_bytes(l)),
                        None => human_bytes(r.memory_working_set),
                    };
                    vec![
                        r.replica.clone(),
                        r.node.clone(),
                        cpu,
                        format!("{}%", r.throttled_permille / 10),
                        mem,
                        r.oom_kills.to_string(),
                        r.pids.to_string(),
                        format!("{}/s", human_bytes(r.net_rx_per_s)),
                        format!("{}/s", human_bytes(r.net_tx_per_s)),
                        sparkline(&r.cpu_history, 20, r.cpu_request_millis.unwrap_or(0)),
                    ]
                })
                .collect();
            let header =
                ["NAME", "NODE", "CPU", "THROTTLED", "MEMORY", "OOM", "PIDS", "NET IN", "NET OUT", "CPU (15m)"];
            print!("{}", table(&header, &rows));
        }
    }
    Ok(())
}
