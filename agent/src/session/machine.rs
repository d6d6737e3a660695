//! One session with the leader as a state machine without I/O, in the manner of quinn-proto: the
//! driver (`super::session`) reads frames and timers and hands them in with the time; what comes
//! back is what to send and what to do. The rules live here, with tests of their own: the
//! handshake, which network views are confirmed (only those this session passed on, once), what
//! the board reports and when (images, volumes, then replica states: all at the start, then what
//! changed), the heartbeat, and when to ask for a new certificate and what to do with the answer.

use crate::reconcile::plan::{status_delta, Statuses};
use bramble_proto::wire::{AgentMsg, Assignment, ErrorCode, LeaderMsg, SecretPayload};
use bramble_transport::TransportError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{info, warn};

/// Between renewal attempts that got no certificate.
pub const RENEW_RETRY: Duration = Duration::from_secs(30);

/// What happened to one session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the leader refused the session ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String, active: Option<String> },
    #[error("the leader closed the session")]
    Closed,
    #[error("nothing heard from the leader for {0:?}")]
    Silent(std::time::Duration),
    #[error("the leader sent an unexpected message")]
    Unexpected,
}

/// Secrets or configs for the board: (name, version, files) to keep, names to drop.
pub type Payloads = Vec<(String, u64, BTreeMap<String, Vec<u8>>)>;

/// What the driver does for the session, in this order.
#[derive(Debug)]
pub enum Output {
    /// To the reconciler: the desired set (whole, or a change).
    Desired {
        full: bool,
        upsert: Vec<Assignment>,
        remove: Vec<String>,
    },
    /// To the network controller: the leader's network view.
    Network(crate::net::node::NetInput),
    /// Into memory and the replicas' tmpfs (`full`: `put` is all that is needed; drop any other).
    Secrets {
        put: Payloads,
        drop: Vec<String>,
        full: bool,
    },
    Configs {
        put: Payloads,
        drop: Vec<String>,
        full: bool,
    },
    /// To the registry client: how to reach the registries this board's replicas pull from.
    Registries {
        put: Payloads,
        drop: Vec<String>,
        full: bool,
    },
    /// A certificate for the key this session asked with: check it is this node's, keep both.
    Renewed {
        cert_pem: String,
        key_pem: String,
    },
}

/// One session's state, from the leader's welcome until it ends.
#[derive(Debug)]
pub struct Session {
    /// Whether this board runs the network controller (else network views are not passed on).
    network: bool,
    seq: u64,
    sent_images: Option<Vec<String>>,
    sent_volumes: Option<Vec<String>>,
    sent_status: Option<Statuses>,
    /// Network views passed on and not yet confirmed: only this session's leader's numbers mean
    /// anything here.
    forwarded: BTreeSet<u64>,
    /// The key of a renewal asked for, kept until its certificate comes.
    renew_key: Option<String>,
    /// No new renewal request before this (ms since the epoch).
    renew_next_try_ms: u64,
}

/// What the leader's welcome says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcomed {
    /// Send heartbeats this often.
    pub heartbeat: Duration,
    /// Cut off from every leader this long, stop the jobs' runs (none: never).
    pub fence: Option<Duration>,
}

impl Session {
    pub fn new(network: bool) -> Session {
        Session {
            network,
            seq: 0,
            sent_images: None,
            sent_volumes: None,
            sent_status: None,
            forwarded: BTreeSet::new(),
            renew_key: None,
            renew_next_try_ms: 0,
        }
    }

    /// The leader's first answer (none: it closed the stream): the heartbeat period and the fence
    /// of jobs' runs, or why the session ends.
    pub fn welcome(&mut self, first: Option<LeaderMsg>) -> Result<Welcomed, SessionError> {
        match first {
            Some(LeaderMsg::Welcome { heartbeat_ms, fence_ms, .. }) => Ok(Welcomed {
                heartbeat: Duration::from_millis(heartbeat_ms.clamp(100, 60_000)),
                // (At least a second: a leader cannot have runs stopped at every hiccup.)
                fence: (fence_ms > 0).then(|| Duration::from_millis(fence_ms.clamp(1_000, 86_400_000))),
            }),
            Some(LeaderMsg::Refused(e)) => {
                Err(SessionError::Refused { code: e.code, message: e.message, active: e.leader })
            }
            Some(_) => Err(SessionError::Unexpected),
            None => Err(SessionError::Closed),
        }
    }

    /// A message from the leader after the welcome.
    pub fn from_leader(&mut self, msg: LeaderMsg) -> Result<Vec<Output>, SessionError> {
        Ok(match msg {
            LeaderMsg::Desired { full, upsert, remove } => vec![Output::Desired { full, upsert, remove }],
            LeaderMsg::Network { node, full, upsert, remove, version, peers } => {
                if !self.network {
                    return Ok(vec![]);
                }
                self.forwarded.insert(version);
                vec![Output::Network(crate::net::node::NetInput::Leader { node, full, upsert, remove, version, peers })]
            }
            LeaderMsg::Secrets { put, drop, full } => {
                if !put.is_empty() || !drop.is_empty() {
                    info!(received = ?names(&put), dropped = ?drop, full, "secrets from the leader");
                }
                vec![Output::Secrets { put: payloads(put), drop, full }]
            }
            LeaderMsg::Configs { put, drop, full } => {
                if !put.is_empty() || !drop.is_empty() {
                    info!(received = ?names(&put), dropped = ?drop, full, "configs from the leader");
                }
                vec![Output::Configs { put: payloads(put), drop, full }]
            }
            LeaderMsg::Registries { put, drop, full } => vec![Output::Registries { put: payloads(put), drop, full }],
            LeaderMsg::Renewed { cert_pem, error } => match (cert_pem, self.renew_key.take()) {
                (Some(cert_pem), Some(key_pem)) => vec![Output::Renewed { cert_pem, key_pem }],
                (Some(_), None) => {
                    warn!("the leader sent a certificate this session did not ask for: ignored");
                    vec![]
                }
                (None, _) => {
                    warn!("the leader did not renew the certificate: {}", error.unwrap_or_default());
                    vec![]
                }
            },
            LeaderMsg::Refused(e) => {
                return Err(SessionError::Refused { code: e.code, message: e.message, active: e.leader })
            }
            LeaderMsg::Welcome { .. } => return Err(SessionError::Unexpected),
        })
    }

    /// The network controller has applied view `version`: confirmed if this session passed it on
    /// (and views before it, never confirmed now, are forgotten).
    pub fn network_applied(&mut self, version: u64) -> Option<AgentMsg> {
        if !self.forwarded.remove(&version) {
            return None;
        }
        self.forwarded.retain(|f| *f > version);
        Some(AgentMsg::NetworkApplied { version })
    }

    /// What the board shows now; the reports not sent yet — the image store's list, the local
    /// volumes, replica states (all at the start of the session, then what changed).
    pub fn report(&mut self, images: &[String], volumes: &[String], status: &Statuses) -> Vec<AgentMsg> {
        let mut out = Vec::new();
        if self.sent_images.as_deref() != Some(images) {
            out.push(AgentMsg::Images(images.to_vec()));
            self.sent_images = Some(images.to_vec());
        }
        if self.sent_volumes.as_deref() != Some(volumes) {
            out.push(AgentMsg::Volumes(volumes.to_vec()));
            self.sent_volumes = Some(volumes.to_vec());
        }
        if let Some((full, replicas)) = status_delta(self.sent_status.as_ref(), status) {
            out.push(AgentMsg::Status { full, replicas });
            self.sent_status = Some(status.clone());
        }
        out
    }

    /// The heartbeat, at `now_ms`; and a renewal request when the certificate is past
    /// `renew_at_ms` (two thirds of its life) and none was asked for in the last [`RENEW_RETRY`].
    /// `csr` makes a CSR and its key.
    pub fn tick(
        &mut self,
        now_ms: u64,
        renew_at_ms: Option<u64>,
        csr: impl FnOnce() -> Result<(String, String), String>,
    ) -> Vec<AgentMsg> {
        self.seq += 1;
        let mut out = vec![AgentMsg::Heartbeat { seq: self.seq }];
        if renew_at_ms.is_some_and(|at| now_ms >= at) && now_ms >= self.renew_next_try_ms {
            self.renew_next_try_ms = now_ms + RENEW_RETRY.as_millis() as u64;
            match csr() {
                Ok((csr_pem, key_pem)) => {
                    info!("renewing this board's certificate (two thirds of its life have passed)");
                    self.renew_key = Some(key_pem);
                    out.push(AgentMsg::Renew { csr_pem });
                }
                Err(e) => warn!("cannot make a key to renew the certificate: {e}"),
            }
        }
        out
    }
}

fn names(put: &[SecretPayload]) -> Vec<String> {
    put.iter().map(|s| format!("{} v{}", s.name, s.version)).collect()
}

fn payloads(put: Vec<SecretPayload>) -> Payloads {
    put.into_iter().map(|s| (s.name, s.version, s.values.0)).collect()
}

#[cfg(test)]
mod tests;
