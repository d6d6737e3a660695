//! What one board is sent during its session, and in which order, as a state machine without I/O
//! (in the manner of quinn-proto): the driver hands in what the leader publishes — the network
//! view, the board's desired set, whether a restore holds sets back — and, when the machine asks,
//! the secrets' and configs' current versions read from the store; it gets back the messages to
//! send. The rules:
//! - the network first: a board knows its pod subnet and the services before it starts pods;
//! - then the secrets and configs the replicas of its set use, and the settings of the registries
//!   their images come from, before the set that needs them — never one that no replica there
//!   uses, and a drop when the last user is gone;
//! - then the set: whole at the start of the session, changes after;
//! - after a restore, until every board has been seen, additions only (a set sent whole would
//!   stop what the backup does not know); then the whole set, once.
//!   Nothing is sent of the set before the replica controller's first pass.

use crate::controllers::desired::{self, DesiredSet};
use crate::network::view::{self, NetworkView};
use bramble_proto::wire::{LeaderMsg, SecretPayload, SecretValues};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A secret's or config's version and its files.
pub type Versioned = (u64, BTreeMap<String, Vec<u8>>);

/// Secrets, configs or registry settings: what a board is sent for its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Secrets,
    Configs,
    /// By registry host: the `[[registry]]` for each host the replicas' images come from.
    Registries,
}

const KINDS: [Payload; 3] = [Payload::Secrets, Payload::Configs, Payload::Registries];

impl Payload {
    /// The names the replicas of `set` use.
    pub fn needed(self, set: &DesiredSet) -> BTreeSet<String> {
        set.values()
            .flat_map(|a| match self {
                Payload::Secrets => a.spec.secret_names().into_iter().collect::<Vec<_>>(),
                Payload::Configs => a.spec.configs.iter().map(|c| c.name.as_str().to_string()).collect(),
                Payload::Registries => std::iter::once(&a.spec.image)
                    .chain(a.spec.containers.iter().chain(&a.spec.init).map(|c| &c.image))
                    .map(|i| i.registry.clone())
                    .collect(),
            })
            .collect()
    }
}

/// One board's session.
#[derive(Debug)]
pub struct Session {
    name: String,
    sent_network: Option<view::Sent>,
    sent: Option<DesiredSet>,
    held_back: bool,
    sent_secrets: BTreeMap<String, u64>,
    sent_configs: BTreeMap<String, u64>,
    sent_registries: BTreeMap<String, u64>,
    /// Whether this session has sent secrets, configs, registries (the first message of each is
    /// `full`: the board may hold some from an earlier session that it no longer needs).
    sent_payloads: [bool; 3],
    /// Secrets and configs are looked at when one changed or this board's set did, not on every
    /// heartbeat.
    check_payloads: bool,
    /// The agent takes registry settings (an older one does not: it is sent none).
    registries: bool,
    /// The agent takes other boards' changes alone (an older one is sent its part whole).
    peer_deltas: bool,
}

impl Session {
    pub fn new(name: &str) -> Session {
        Session {
            name: name.to_string(),
            sent_network: None,
            sent: None,
            held_back: false,
            sent_secrets: BTreeMap::new(),
            sent_configs: BTreeMap::new(),
            sent_registries: BTreeMap::new(),
            sent_payloads: [false; 3],
            check_payloads: true,
            registries: true,
            peer_deltas: true,
        }
    }

    /// For an agent that does not take [`LeaderMsg::Registries`] (one from before them).
    pub fn without_registries(mut self) -> Session {
        self.registries = false;
        self
    }

    /// For an agent that does not take other boards' changes alone (one from before them).
    pub fn without_peer_deltas(mut self) -> Session {
        self.peer_deltas = false;
        self
    }

    /// A secret or config changed somewhere in the cluster.
    pub fn payloads_changed(&mut self) {
        self.check_payloads = true;
    }

    /// Whether [`Session::poll`] with this set will read the store (the driver then calls it off
    /// the async threads).
    pub fn reads_store(&self, set: Option<&DesiredSet>) -> bool {
        set.is_some_and(|s| self.check_payloads || self.sent.as_ref() != Some(s))
    }

    /// The messages that bring the board to what the leader publishes now, in order. `load` reads
    /// a secret's or config's current version and files (none: it does not exist yet — the replica
    /// waits and says so); it is called only when [`Session::reads_store`] said so. A load that
    /// fails is logged and tried again at the next change.
    pub fn poll(
        &mut self,
        network: Option<&Arc<NetworkView>>,
        set: Option<DesiredSet>,
        restoring: bool,
        mut load: impl FnMut(Payload, &str) -> Result<Option<Versioned>, String>,
    ) -> Vec<LeaderMsg> {
        let mut out = Vec::new();
        if let Some(view) = network {
            let (msg, now) = view::delta(self.sent_network.as_ref(), view, &self.name, self.peer_deltas);
            out.extend(msg);
            self.sent_network = Some(now);
        }
        // Released from a restore's hold-back: the payloads are said whole now.
        if set.is_some() && (set != self.sent || (!restoring && self.held_back)) {
            self.check_payloads = true;
        }
        if let Some(set) = set.as_ref().filter(|_| self.check_payloads) {
            self.check_payloads = false;
            let kinds: Vec<Payload> =
                KINDS.into_iter().filter(|k| *k != Payload::Registries || self.registries).collect();
            for kind in kinds {
                match self.payloads(kind, set, restoring, &mut load) {
                    Ok(msg) => out.extend(msg),
                    Err(e) => tracing::warn!("cannot send {kind:?}: {e}"),
                }
            }
        }
        if restoring && self.sent.is_none() {
            self.sent = Some(DesiredSet::new());
            self.held_back = true;
        } else if !restoring && self.held_back {
            self.sent = None;
            self.held_back = false;
        }
        if let Some(set) = set {
            out.extend(desired::delta(self.sent.as_ref(), &set));
            self.sent = Some(set);
        }
        out
    }

    /// Each secret (or config) the replicas of `set` use that is new or changed since it was sent,
    /// and those no replica there uses any more; the first time in a session, all of them (`full`),
    /// even none — but not while a restore holds sets back (a board's replicas the backup does not
    /// know run on, and keep what they use).
    fn payloads(
        &mut self,
        kind: Payload,
        set: &DesiredSet,
        restoring: bool,
        load: &mut impl FnMut(Payload, &str) -> Result<Option<Versioned>, String>,
    ) -> Result<Option<LeaderMsg>, String> {
        let needed = kind.needed(set);
        let (sent, started) = match kind {
            Payload::Secrets => (&mut self.sent_secrets, &mut self.sent_payloads[0]),
            Payload::Configs => (&mut self.sent_configs, &mut self.sent_payloads[1]),
            Payload::Registries => (&mut self.sent_registries, &mut self.sent_payloads[2]),
        };
        // A full message replaces what the board holds: it carries every one the set uses, even
        // those sent before (during a restore's hold-back).
        let full = !*started && !restoring;
        let mut put = Vec::new();
        let mut gone = Vec::new();
        for name in &needed {
            let Some((version, values)) = load(kind, name)? else {
                // A registry's settings that are gone go from the board too (a secret or config
                // that is gone stays with the replicas that use it until they stop).
                if kind == Payload::Registries && sent.contains_key(name) {
                    gone.push(name.clone());
                }
                continue;
            };
            if full || sent.get(name) != Some(&version) {
                put.push(SecretPayload { name: name.clone(), version, values: SecretValues(values) });
            }
        }
        let mut drop: Vec<String> = sent.keys().filter(|n| !needed.contains(*n)).cloned().collect();
        drop.extend(gone);
        *started |= full;
        if put.is_empty() && drop.is_empty() && !full {
            return Ok(None);
        }
        for p in &put {
            sent.insert(p.name.clone(), p.version);
        }
        for d in &drop {
            sent.remove(d);
        }
        Ok(Some(match kind {
            Payload::Secrets => LeaderMsg::Secrets { put, drop, full },
            Payload::Configs => LeaderMsg::Configs { put, drop, full },
            Payload::Registries => LeaderMsg::Registries { put, drop, full },
        }))
    }
}

#[cfg(test)]
mod tests;
