//! Applies nft scripts: `nft -f -` reads the whole script and commits it as one transaction,
//! or nothing of it (ADR 10 says why nft's own language and not netlink or the JSON crate).

use super::NetError;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Applies `script` atomically; returns how long nft took.
pub fn apply(script: &str) -> Result<Duration, NetError> {
    let started = Instant::now();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("cannot run nft (install Debian's nftables package): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).lines().take(6).collect::<Vec<_>>().join("; ");
        return Err(NetError::Nft(format!("nft refused the rules: {why}")));
    }
    Ok(started.elapsed())
}
