//! SIGTERM and SIGINT as a future. Install the handlers before telling systemd READY=1, or a
//! stop that comes right after start would kill the process without a graceful shutdown.

use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug)]
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers; call inside the tokio runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        Ok(Shutdown { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
