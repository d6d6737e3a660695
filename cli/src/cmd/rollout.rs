//! `bramble rollout status|history|undo|restart app/NAME`: follow, list, reverse and repeat an
//! app's rollouts. `status` waits, and its exit code gates a pipeline: 0 when the revision rolled
//! out, 1 when it failed or was rolled back, or when the timeout passed first.

use crate::client::{request, unexpected, CliError};
use crate::output::{json, table, Format};
use bramble_proto::model::{RevisionRecord, RolloutState};
use bramble_proto::quantity::HumanDuration;
use bramble_proto::wire::{Request, Response};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Wait for the latest rollout of `app/NAME`: exit 0 when it completed, 1 when it failed or
    /// was rolled back (or on timeout).
    Status {
        /// `app/NAME` (or `NAME`).
        target: String,
        /// Give up after this long (`90s`, `5m`); the rollout itself goes on.
        #[arg(long, default_value = "10m")]
        timeout: HumanDuration,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// The app's revisions (the last ten): number, image, when, why, and how each rollout went.
    History {
        target: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Go back to an earlier revision (default: the one before the current), as a new revision.
    Undo {
        target: String,
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Replace every replica with a new one of the same spec, rolled like any update.
    Restart { target: String },
}

/// `app/web` or `web`.
fn app_name(target: &str) -> Result<String, CliError> {
    let name = target.strip_prefix("app/").or_else(|| target.strip_prefix("apps/")).unwrap_or(target);
    if name.is_empty() || name.contains('/') {
        return Err(CliError::Other(format!("expected app/NAME, found {target:?}")));
    }
    Ok(name.to_string())
}

async fn history(config: Option<PathBuf>, app: &str) -> Result<Vec<RevisionRecord>, CliError> {
    match request(config, Request::RolloutHistory { app: app.to_string() }).await? {
        Response::History(h) => Ok(h),
        r => Err(unexpected(&r)),
    }
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    match args.what {
        What::Status { target, timeout, output } => status(config, &app_name(&target)?, timeout.0, output).await,
        What::History { target, output } => {
            let h = history(config, &app_name(&target)?).await?;
            if output == Format::Json {
                print!("{}", json(&h));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|r| {
                    vec![
                        r.number.to_string(),
                        r.spec.image.to_string(),
                        super::age(r.created_ms),
                        format!("{:?}", r.state),
                        r.cause.clone(),
                        r.message.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["REVISION", "IMAGE", "AGE", "ROLLOUT", "CAUSE", "MESSAGE"], &rows));
            Ok(())
        }
        What::Undo { target, to_revision } => {
            done(request(config, Request::RolloutUndo { app: app_name(&target)?, to: to_revision }).await?)
        }
        What::Restart { target } => done(request(config, Request::RolloutRestart { app: app_name(&target)? }).await?),
    }
}

fn done(r: Response) -> Result<(), CliError> {
    match r {
        Response::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        r => Err(unexpected(&r)),
    }
}

/// Follows the revision that is latest now (and a newer one, if someone applies again) until it
/// ends; prints each change of its progress.
async fn status(config: Option<PathBuf>, app: &str, timeout: Duration, output: Format) -> Result<(), CliError> {
    let started = Instant::now();
    let mut watched: Option<u64> = None;
    let mut said = String::new();
    loop {
        let h = history(config.clone(), app).await?;
        let Some(latest) = h.last() else {
            return Err(CliError::Other(format!("app {app} has no revision yet")));
        };
        let number = *watched.get_or_insert(latest.number);
        let Some(r) = h.iter().find(|r| r.number == number) else {
            return Err(CliError::Other(format!("revision {number} of app {app} is no longer kept")));
        };
        let line = match r.state {
            RolloutState::Progressing => format!(
                "Waiting for revision {number} of app/{app}: {}",
                if r.message.is_empty() { "starting" } else { &r.message }
            ),
            RolloutState::Complete => format!("app/{app}: revision {number} rolled out ({})", r.message),
            RolloutState::Failed => format!("app/{app}: revision {number} failed: {}", r.message),
            RolloutState::RolledBack => format!("app/{app}: revision {number} was rolled back: {}", r.message),
            RolloutState::Superseded => {
                // Someone applied again: follow the newer revision.
                watched = Some(latest.number);
                format!("app/{app}: revision {number} superseded by revision {}", latest.number)
            }
        };
        if line != said && output != Format::Json {
            println!("{line}");
        }
        said = line;
        match r.state {
            RolloutState::Complete => {
                if output == Format::Json {
                    print!("{}", json(r));
                }
                return Ok(());
            }
            RolloutState::Failed | RolloutState::RolledBack => {
                if output == Format::Json {
                    print!("{}", json(r));
                }
                return Err(CliError::Other(format!("the rollout of app/{app} did not complete")));
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(CliError::Other(format!(
                "timed out after {} waiting for app/{app} (the rollout goes on)",
                HumanDuration(timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
