//! `bramble-agent image pull|import|ls|rm|prune`: the board's image store, used directly (the
//! cluster-wide `bramble image …` goes through the leader).

use bramble_agent::config::AgentConfig;
use bramble_images::gc;
use bramble_images::import::{import, ImportOptions};
use bramble_images::pull::{PullPolicy, Puller};
use bramble_images::registry::RegistryClient;
use bramble_images::rootfs::Rootfses;
use bramble_images::store::ContentStore;
use bramble_images::{ImageRecord, ImageRef, Progress};
use bramble_proto::model::Arch;
use bramble_proto::quantity::{format_duration, human_bytes};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry into this board's store.
    Pull {
        reference: String,
        /// Resolve the reference again even if the store has it.
        #[arg(long)]
        always: bool,
        /// Pull for another architecture (amd64, arm64, arm/v7, arm/v6).
        #[arg(long)]
        arch: Option<String>,
    },
    /// Import an OCI layout (directory or tar), an OCI archive or a `docker save` tarball.
    Import {
        path: PathBuf,
        /// The reference to record the image under (needed when the archive names none).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    Ls {
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Remove an image (its layers go at the next prune unless another image shares them).
    Rm { reference: String },
    /// Remove images no container uses, then every unreferenced blob and layer.
    Prune,
}

pub fn run(config: &AgentConfig, cmd: ImageCommand) -> anyhow::Result<()> {
    let store = ContentStore::open(&config.images_dir())?;
    let roots = Rootfses::new(store.clone(), &config.data_dir.join("containers"));
    let unpack = config.images.unpack_options();
    match cmd {
        ImageCommand::Pull { reference, always, arch } => {
            let image: ImageRef = reference.parse()?;
            let arch = match arch {
                Some(a) => Arch::try_from(a).map_err(|e| anyhow::anyhow!(e))?,
                None => bramble_agent::sysinfo::arch(),
            };
            let client = RegistryClient::new(config.images.registries.clone());
            let puller = Puller { store: &store, client: &client, arch, unpack, peers: None };
            let policy = if always { PullPolicy::Always } else { PullPolicy::IfNotPresent };
            let progress = Progress::default();
            let started = Instant::now();
            let rec = with_progress(&progress, "pulling", || puller.pull(&image, policy, &progress))?;
            relieve(config, &store, &roots)?;
            println!(
                "{} {} ({}, {} layers, {})",
                rec.reference,
                rec.manifest_digest,
                rec.platform,
                rec.layers.len(),
                format_duration(started.elapsed())
            );
        }
        ImageCommand::Import { path, name } => {
            let progress = Progress::default();
            let recs = with_progress(&progress, "importing", || {
                import(&store, &path, &bramble_agent::sysinfo::arch(), &ImportOptions { name }, &progress)
            })?;
            relieve(config, &store, &roots)?;
            for r in recs {
                println!("{} {} ({})", r.reference, r.manifest_digest, r.platform);
            }
        }
        ImageCommand::Ls { output } => {
            let images = store.images()?;
            if output.as_deref() == Some("json") {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print!("{}", table(&images));
            }
        }
        ImageCommand::Rm { reference } => {
            let leases = roots.leases();
            if leases.iter().any(|l| l.image == reference) {
                anyhow::bail!("image {reference} is in use by a container");
            }
            if !store.remove_image(&reference)? {
                anyhow::bail!("image {reference} is not in the store");
            }
            let r = gc::collect(&store, &leases)?;
            println!("removed {reference} (freed {})", human_bytes(r.bytes_freed));
        }
        ImageCommand::Prune => {
            let r = gc::prune(&store, &roots.leases())?;
            for i in &r.images_removed {
                println!("removed {i}");
            }
            println!("freed {} ({} blobs, {} layers)", human_bytes(r.bytes_freed), r.blobs_removed, r.layers_removed);
        }
    }
    Ok(())
}

/// Keeps the disk below the configured threshold after adding an image.
fn relieve(config: &AgentConfig, store: &ContentStore, roots: &Rootfses) -> anyhow::Result<()> {
    let (high, low) = (config.images.gc_high_percent, config.images.gc_low_percent);
    if let Some(r) = gc::relieve_disk(store, &roots.leases(), high, low, bramble_proto::time::now_ms())? {
        eprintln!(
            "disk above {high}%: removed {} unused image(s), freed {}",
            r.images_removed.len(),
            human_bytes(r.bytes_freed)
        );
    }
    Ok(())
}

fn table(images: &[ImageRecord]) -> String {
    let mut rows = vec![["REFERENCE".to_string(), "PLATFORM".into(), "SIZE".into(), "LAYERS".into(), "DIGEST".into()]];
    for i in images {
        rows.push([
            i.reference.clone(),
            i.platform.clone(),
            human_bytes(i.size()),
            i.layers.len().to_string(),
            i.manifest_digest.hex()[..12].to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| if i < 4 { format!("{c:<w$}   ", w = widths[i]) } else { c.clone() })
                .collect::<String>()
                + "\n"
        })
        .collect()
}

/// Runs `f` while a thread shows its progress on a terminal (a final line otherwise).
fn with_progress<T, E>(progress: &Progress, verb: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let tty = std::io::stderr().is_terminal();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shower = tty.then(|| {
        let (p, d, verb) = (progress.clone(), done.clone(), verb.to_string());
        std::thread::spawn(move || {
            while !d.load(std::sync::atomic::Ordering::Relaxed) {
                let (now, total) = p.totals();
                let layers = p.snapshot();
                let finished = layers.iter().filter(|l| l.done == l.total && l.total > 0).count();
                eprint!(
                    "\r{verb}: {} / {} ({finished}/{} layers)   ",
                    human_bytes(now),
                    human_bytes(total),
                    layers.len()
                );
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!();
        })
    });
    let r = f();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(h) = shower {
        let _ = h.join();
    }
    r
}
