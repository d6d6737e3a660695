//! `bramble-shim --dir DIR`: the shim of one container (see `bramble_agent::runtime::shim`),
//! started by the agent; `bramble-shim --delete --dir DIR`: removes what a dead shim left. Not
//! for humans.
//!
//! A binary of its own so that each running container costs little memory: it holds none of the
//! agent's tokio runtime, QUIC, TLS, registry client or image code, so it has far fewer pages to
//! map and far fewer relocations to make private in every process.

use bramble_agent::runtime::protocol::SHIM_PROTOCOL;
use bramble_agent::runtime::{shim, ContainerDir};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let dir = match args.as_slice() {
        [flag, dir] if flag == "--dir" => PathBuf::from(dir),
        [delete, flag, dir] if delete == "--delete" && flag == "--dir" => {
            bramble_daemon::observability::init_shim();
            return match shim::delete(&ContainerDir(PathBuf::from(dir))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bramble-shim: {e}");
                    ExitCode::from(1)
                }
            };
        }
        [flag] if flag == "--version" || flag == "-V" => {
            println!("bramble-shim {} (shim protocol {SHIM_PROTOCOL})", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!(
                "usage: bramble-shim [--delete] --dir DIR (bramble-agent starts it for each container; not for humans)"
            );
            return ExitCode::from(2);
        }
    };
    bramble_daemon::observability::init_shim();
    match shim::main(ContainerDir(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bramble-shim: {e}");
            ExitCode::from(1)
        }
    }
}
