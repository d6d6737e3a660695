//! QUIC with mutual TLS for Bramble.
//!
//! - [`pki`]: the cluster CA, certificates for the leader, admins and nodes, CSRs, identities.
//! - [`tls`]: rustls configurations (ring provider, TLS 1.3 only), including the verifier a
//!   joining agent uses to pin the cluster CA from its join token.
//! - [`quic`]: quinn endpoints and framed streams carrying `bramble-proto` messages.

pub mod admin;
pub mod backup;
pub mod pki;
pub mod quic;
pub mod tls;

pub use pki::{Identity, PkiError};
pub use quic::TransportError;
