//! Messages between the CLI, agents and the leader.
//!
//! Every QUIC stream starts with one [`Open`] frame that carries the protocol version. A *call*
//! stream (CLI requests, an agent's join) then carries one [`Response`] back. A *session* stream
//! (one per connected agent) then carries [`LeaderMsg`] down and [`AgentMsg`] up for as long as the
//! agent is connected.
//!
//! ```text
//! api.rs      calls: a CLI's (or a joining agent's) Request, and its one Response
//! session.rs  an agent's session: Hello, LeaderMsg down, AgentMsg up
//! ```

mod api;
mod session;

pub use api::*;
pub use session::*;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
/// 2: pod networking (`LeaderMsg::Network`, replica addresses), typed event references.
/// 3: probes and readiness, BackOff, draining replicas, rollouts.
pub const PROTOCOL_VERSION: u32 = 3;
/// The TLS ALPN protocol id.
pub const ALPN: &[u8] = b"bramble/1";
/// The name every leader certificate carries and every client verifies.
pub const LEADER_SERVER_NAME: &str = "bramble-leader";

/// The first frame of every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    pub version: u32,
    pub kind: OpenKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenKind {
    Call(Request),
    Session(Box<Hello>),
    /// A board asks for an image's content from the boards that hold it (boards only).
    Peer(PeerRequest),
}

/// What a board pulling `reference` asks of its peers, through the leader. Only for an image one
/// of the board's replicas uses; the holder serves only what that image's record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    /// The digest of the document `reference` names (its index, or its manifest).
    Resolve { reference: String },
    /// Blob `digest` (a document, config or layer of `reference`), of `size` bytes; `not_from`:
    /// boards whose copy did not match.
    Blob {
        reference: String,
        digest: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        not_from: Vec<String>,
        /// One of the image's layers (not a document): only these make a board the image's
        /// fetcher for the LAN — a board whose platform the image lacks stops before them.
        #[serde(default)]
        layer: bool,
    },
}

/// The leader's (and a holder's) answer to a [`PeerRequest`]; `Found` of a blob is followed by its
/// bytes on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerReply {
    /// From board `from`: the digest (`Resolve`), or `size` bytes that follow (`Blob`).
    Found {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        #[serde(default)]
        size: u64,
    },
    /// Board `fetcher` is fetching this image from its registry now: ask again soon (the LAN
    /// fetches it once).
    Wait { fetcher: String },
    /// No board has it, and none is fetching it: fetch it yourself (the leader counts you as its
    /// fetcher).
    NotHere,
    /// Refused: `reason`.
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn no_debug_output_of_a_message_shows_a_secret_value() {
        let values = SecretValues(BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]));
        let req = Request::PutSecret { name: "db".into(), values: values.clone(), create: true };
        let msg = LeaderMsg::Secrets {
            put: vec![SecretPayload { name: "db".into(), version: 1, values: values.clone() }],
            drop: vec![],
            full: true,
        };
        for shown in [format!("{req:?}"), format!("{msg:?}"), format!("{req:#?}")] {
            assert!(shown.contains("password") && !shown.contains("hunter2"), "{shown}");
        }
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(json, r#"{"password":[104,117,110,116,101,114,50]}"#, "the wire form is the map itself");
    }
}
