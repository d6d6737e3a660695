//! Probes in the poll loop: which are due, exec probes through `exec.rs`, network probes as
//! non-blocking attempts, and their results into the pure tracker (`runtime/probe.rs`).

use super::*;

impl Shim {
    /// Whether probes run now: not while the container is down, being killed or stopped.
    pub(super) fn probing(&self) -> bool {
        self.running_pid().is_some() && self.killing_for.is_none() && !self.lifecycle.stopping
    }

    /// Starts every probe that is due; results come back through `record_probe`.
    pub(super) fn run_probes(&mut self, now: u64) {
        if !self.probing() {
            return;
        }
        for (i, probe) in self.probes.take_due(now) {
            let deadline = now + probe.timeout_ms.max(1);
            let started = match &probe.action {
                ProbeAction::Exec { args } => {
                    self.exec(args.clone(), Vec::new(), probe.timeout_ms, ExecOwner::Probe(i))
                }
                action => match self.config.ip {
                    None => Err("the replica has no address".to_string()),
                    Some(ip) => NetAttempt::start(i, ip, action, deadline).map(|a| self.net_probes.push(a)),
                },
            };
            if let Err(message) = started {
                self.record_probe(i, false, &message);
            }
        }
    }

    pub(super) fn advance_probe(&mut self, i: usize) {
        let Some(a) = self.net_probes.get_mut(i) else { return };
        if let Step::Done(ok, message) = a.advance() {
            // Recorded (and removed) in `finish_net_probes`, after every ready one has moved.
            a.deadline_ms = 0;
            a.result = Some((ok, message));
        }
    }

    /// Records finished and timed-out network probes.
    pub(super) fn finish_net_probes(&mut self) {
        let now = now_ms();
        let mut done = Vec::new();
        self.net_probes.retain_mut(|a| {
            let result = match a.result.take() {
                Some(r) => Some(r),
                None if now >= a.deadline_ms => Some((false, "timed out".to_string())),
                None => None,
            };
            match result {
                Some((ok, message)) => {
                    done.push((a.probe, ok, message));
                    false
                }
                None => true,
            }
        });
        for (i, ok, message) in done {
            self.record_probe(i, ok, &message);
        }
    }

    pub(super) fn record_probe(&mut self, i: usize, ok: bool, message: &str) {
        if let Verdict::Kill(why) = self.probes.record(i, ok, message, now_ms()) {
            tracing::info!(id = %self.config.id, "{why}: killing the container");
            let _ = self.log.write(1, format!("bramble: {why}; stopping the container\n").as_bytes());
            self.killing_for = Some(why);
            self.signal_stop(self.config.stop_grace_ms);
        }
    }
}
