//! `bramble events [-w] [--since 10m]`: what happened in the cluster, oldest first.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::model::Event;
use bramble_proto::quantity::HumanDuration;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Keep watching for new events.
    #[arg(short, long)]
    watch: bool,
    /// Only events newer than this (e.g. 10m).
    #[arg(long)]
    since: Option<HumanDuration>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

fn print(events: &[Event], output: Format, header: bool) {
    if output == Format::Json {
        for e in events {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| vec![super::age(e.time_ms), e.object.to_string(), e.reason.to_string(), e.message.clone()])
        .collect();
    let text = table(&["AGE", "OBJECT", "REASON", "MESSAGE"], &rows);
    let text = if header { text.as_str() } else { text.split_once('\n').map_or("", |(_, rest)| rest) };
    print!("{text}");
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let mut since = args.since.map_or(0, |d| super::now_ms().saturating_sub(d.0.as_millis() as u64));
    let mut first = true;
    loop {
        let events = match request(config.clone(), Request::GetEvents { since_ms: since }).await? {
            Response::Events(e) => e,
            r => return Err(unexpected(&r)),
        };
        if !args.watch {
            if args.output == Format::Json {
                print!("{}", json(&events));
            } else {
                print(&events, args.output, true);
            }
            return Ok(());
        }
        // Events of the same millisecond as the last one shown are shown once.
        let new: Vec<Event> = if first { events } else { events.into_iter().filter(|e| e.time_ms > since).collect() };
        if first || !new.is_empty() {
            print(&new, args.output, first);
        }
        if let Some(last) = new.last() {
            since = last.time_ms;
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
