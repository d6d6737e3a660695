//! `bramble describe node NAME`.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, Format};
use bramble_proto::quantity::{human_bytes, Cpu};
use bramble_proto::wire::{Request, Response};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    kind: Kind,
    name: String,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    #[value(alias = "nodes", alias = "no")]
    Node,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let Kind::Node = args.kind;
    let (v, events) = match request(config, Request::GetNode { name: args.name }).await? {
        Response::Node { node, events } => (node, events),
        r => return Err(unexpected(&r)),
    };
    if args.output == Format::Json {
        print!("{}", json(&serde_json::json!({ "node": v, "events": events })));
        return Ok(());
    }
    let n = &v.node;
    let mut s = String::new();
    let _ = writeln!(s, "Name:          {}", n.meta.name);
    let _ = writeln!(s, "Status:        {}", v.status_text());
    let labels = n.effective_labels();
    let _ = writeln!(
        s,
        "Labels:        {}",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n               ")
        }
    );
    let _ = writeln!(s, "Unschedulable: {}", n.unschedulable);
    let _ = writeln!(s, "Created:       {} ago", super::age(n.meta.created_ms));
    let _ = writeln!(s, "System:");
    let _ = writeln!(s, "  Arch:        {}", n.info.arch);
    let _ = writeln!(s, "  OS:          {}", n.info.os);
    let _ = writeln!(s, "  Kernel:      {}", n.info.kernel);
    let _ = writeln!(s, "  Agent:       {}", n.info.agent_version);
    let _ = writeln!(s, "Addresses:");
    if let Some(a) = &v.session_address {
        let _ = writeln!(s, "  Session:     {a} (epoch {})", v.session_epoch.unwrap_or(0));
    }
    for a in &n.info.addresses {
        let _ = writeln!(s, "  Interface:   {a}");
    }
    let _ = writeln!(
        s,
        "Capacity:      cpu {}, memory {}, replicas {}",
        Cpu(n.info.capacity.cpu_millis),
        human_bytes(n.info.capacity.memory_bytes),
        n.info.capacity.replicas
    );
    let _ = writeln!(
        s,
        "Allocatable:   cpu {}, memory {}, replicas {}",
        Cpu(n.info.allocatable.cpu_millis),
        human_bytes(n.info.allocatable.memory_bytes),
        n.info.allocatable.replicas
    );
    let _ = writeln!(s, "Conditions:");
    let c = &v.ready;
    let _ = writeln!(
        s,
        "  {}  {:?}  {}  {} (since {} ago)",
        c.kind,
        c.status,
        c.reason,
        c.message,
        super::age(c.last_transition_ms)
    );
    let _ = writeln!(
        s,
        "Last contact:  {}",
        if v.last_seen_ms == 0 {
            "never since the leader started".into()
        } else {
            format!("{} ago", super::age(v.last_seen_ms))
        }
    );
    let _ = writeln!(s, "Events:");
    if events.is_empty() {
        let _ = writeln!(s, "  <none>");
    }
    for e in events.iter().rev().take(20).rev() {
        let _ = writeln!(s, "  {:>8} ago  {:<16} {}", super::age(e.time_ms), e.reason, e.message);
    }
    print!("{s}");
    Ok(())
}
