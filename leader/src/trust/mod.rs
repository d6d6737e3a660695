//! Who may do what, and what must stay secret: join tokens, users with their roles and the
//! revocation list, secrets sealed under the data dir's key.
//!
//! ```text
//! tokens.rs     join tokens: created, verified, used once, revoked
//! users.rs      users from CSRs, roles, the revocation list checked on every stream
//! secrets.rs    secrets sealed with ChaCha20-Poly1305 under `secrets.key`; rotation
//! ```

pub mod secrets;
pub mod tokens;
pub mod users;
