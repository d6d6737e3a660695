//! `bramble completion SHELL` and `bramble man --out DIR`: what shells and `man` need, made from
//! the same command definitions as `--help`, so they never disagree with it. The Debian package
//! installs both (`cross/deb.sh`).

use crate::client::CliError;
use clap::CommandFactory;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell: bash (`source <(bramble completion bash)`), zsh or fish.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// The directory to write `bramble.1` and a page per subcommand (`bramble-get.1`, …) into.
    #[arg(long)]
    pub out: PathBuf,
}

/// Prints the completion script for `shell` of the command `cmd`.
pub fn completion(mut cmd: clap::Command, args: CompletionArgs) -> Result<(), CliError> {
    let name = cmd.get_name().to_string();
    // Into memory first: clap_complete panics on a write error (`| head` closing the pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Other(format!("cannot write: {e}"))),
        _ => Ok(()),
    }
}

/// Writes the man pages of `cmd` and of every subcommand (nested ones too) into `args.out`.
pub fn man(cmd: clap::Command, args: ManArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::Other(format!("cannot create {}: {e}", args.out.display())))?;
    let mut written = 0;
    write_pages(cmd, &args.out, &mut written)?;
    eprintln!("wrote {written} man pages to {}", args.out.display());
    Ok(())
}

fn write_pages(cmd: clap::Command, dir: &Path, written: &mut usize) -> Result<(), CliError> {
    let cmd = cmd.disable_help_subcommand(true);
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_string();
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(|e| CliError::Other(format!("cannot render {name}'s man page: {e}")))?;
    std::fs::write(&path, page).map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let sub = sub.clone().display_name(format!("{name}-{}", sub.get_name()));
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The whole command, for the two above.
pub fn command<T: CommandFactory>() -> clap::Command {
    let mut cmd = T::command();
    cmd.build();
    cmd
}
