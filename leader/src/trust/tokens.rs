//! Join tokens: created by admins, checked when an agent joins. The store keeps only a hash of
//! each secret.

use crate::error::{Error, Result};
use crate::objects::{keys, Objects};
use crate::store::Expect;
use bramble_proto::quantity::format_duration;
use bramble_proto::token::JoinToken;
use bramble_proto::wire::TokenInfo;
use bramble_transport::pki::sha256_hex;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86400);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    secret_sha256: String,
    created_ms: u64,
    expires_ms: u64,
    /// Gone after the first join it lets in.
    #[serde(default)]
    single_use: bool,
}

/// `n` random characters from `[a-z0-9]`, from the system's secure generator.
fn random_chars(n: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 1];
        rng.fill(&mut b).map_err(|_| Error::Internal("system random generator failed".into()))?;
        // 252 = 7 * 36: reject the tail so every character is equally likely.
        if b[0] < 252 {
            out.push(ALPHABET[(b[0] % 36) as usize] as char);
        }
    }
    Ok(out)
}

/// Creates a token valid for `ttl` from `now_ms`.
pub fn create(objects: &Objects, ca_fingerprint: &str, ttl: Duration, now_ms: u64) -> Result<(JoinToken, u64)> {
    create_with(objects, ca_fingerprint, ttl, false, now_ms)
}

/// Creates a token valid for `ttl` from `now_ms`; a `single_use` one is gone after one join.
pub fn create_with(
    objects: &Objects,
    ca_fingerprint: &str,
    ttl: Duration,
    single_use: bool,
    now_ms: u64,
) -> Result<(JoinToken, u64)> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Error::Invalid(format!("token ttl {} is out of range: expected 1m to 365d", format_duration(ttl))));
    }
    let token =
        JoinToken { ca_fingerprint: ca_fingerprint.to_string(), id: random_chars(8)?, secret: random_chars(32)? };
    let expires_ms = now_ms + ttl.as_millis() as u64;
    let secret_sha256 = sha256_hex(token.secret.as_bytes());
    let stored = StoredToken { secret_sha256, created_ms: now_ms, expires_ms, single_use };
    objects.put_at(&keys::token(&token.id), &stored, Expect::Absent)?;
    Ok((token, expires_ms))
}

/// Every token (never its secret), oldest first.
pub fn list(objects: &Objects, now_ms: u64) -> Result<Vec<TokenInfo>> {
    let mut out: Vec<TokenInfo> = objects
        .list_at::<StoredToken>(keys::TOKENS)?
        .into_iter()
        .map(|(key, t)| TokenInfo {
            id: key.trim_start_matches(keys::TOKENS).to_string(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            expired: now_ms >= t.expires_ms,
            single_use: t.single_use,
        })
        .collect();
    out.sort_by_key(|t| (t.created_ms, t.id.clone()));
    Ok(out)
}

/// Removes token `id`: no board joins with it any more (boards that joined keep their
/// certificates).
pub fn revoke(objects: &Objects, id: &str) -> Result<String> {
    let key = keys::token(id);
    let kv = objects.store().get(&key)?.ok_or_else(|| Error::NotFound(format!("token {id:?} not found")))?;
    objects.txn(&[crate::store::TxnOp::Delete { key, expect: Expect::Revision(kv.mod_revision) }])?;
    Ok(format!("token {id} revoked"))
}

/// After a join it let in: a single-use token is removed (a concurrent second use finds it gone
/// or loses the compare-and-swap).
pub fn used(objects: &Objects, token: &str) -> Result<()> {
    let Ok(token) = token.parse::<JoinToken>() else { return Ok(()) };
    let key = keys::token(&token.id);
    let Some(kv) = objects.store().get(&key)? else { return Ok(()) };
    let stored: StoredToken = crate::objects::decode(&kv.key, &kv.value)?;
    if stored.single_use {
        objects.txn(&[crate::store::TxnOp::Delete { key, expect: Expect::Revision(kv.mod_revision) }]).map_err(
            |_| Error::Unauthenticated(format!("join refused: single-use token {} was used meanwhile", token.id)),
        )?;
    }
    Ok(())
}

/// Checks a token presented by a joining agent.
pub fn verify(objects: &Objects, ca_fingerprint: &str, token: &str, now_ms: u64) -> Result<()> {
    let unauth = Error::Unauthenticated;
    let token: JoinToken = token.parse().map_err(|e| unauth(format!("join refused: {e}")))?;
    if token.ca_fingerprint != ca_fingerprint {
        return Err(unauth("join refused: the token was made for another cluster (its CA fingerprint differs)".into()));
    }
    let stored: StoredToken = objects.get_at(&keys::token(&token.id))?.ok_or_else(|| {
        unauth(format!(
            "join refused: token {} is not known to this leader (it was never created or was removed)",
            token.id
        ))
    })?;
    if !constant_time_eq(stored.secret_sha256.as_bytes(), sha256_hex(token.secret.as_bytes()).as_bytes()) {
        return Err(unauth(format!("join refused: wrong secret for token {}", token.id)));
    }
    if now_ms >= stored.expires_ms {
        let ago = Duration::from_millis(now_ms - stored.expires_ms);
        return Err(unauth(format!(
            "join refused: token {} expired {} ago; create a new one with `bramble token create`",
            token.id,
            format_duration(ago)
        )));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn tokens_verify_until_they_expire() {
        let store = Objects::new(std::sync::Arc::new(MemStore::new()));
        let fp = "a".repeat(64);
        let (t, expires) = create(&store, &fp, Duration::from_secs(3600), 1_000).unwrap();
        assert_eq!(expires, 1_000 + 3_600_000);
        verify(&store, &fp, &t.to_string(), 2_000).unwrap();
        let e = verify(&store, &fp, &t.to_string(), expires + 5_000).unwrap_err();
        assert!(e.to_string().contains("expired 5s ago"), "{e}");
        let wrong = JoinToken { secret: "z".repeat(32), ..t.clone() };
        assert!(verify(&store, &fp, &wrong.to_string(), 2_000).unwrap_err().to_string().contains("wrong secret"));
        let other = JoinToken { ca_fingerprint: "b".repeat(64), ..t.clone() };
        assert!(verify(&store, &fp, &other.to_string(), 2_000).unwrap_err().to_string().contains("another cluster"));
        let unknown = JoinToken { id: "zzzzzzzz".into(), ..t };
        assert!(verify(&store, &fp, &unknown.to_string(), 2_000).unwrap_err().to_string().contains("not known"));
        assert!(create(&store, &fp, Duration::from_secs(1), 0).is_err());
    }

    #[test]
    fn tokens_are_listed_revoked_and_single_use_ones_go_after_one_join() {
        let store = Objects::new(std::sync::Arc::new(MemStore::new()));
        let fp = "a".repeat(64);
        let (t, _) = create(&store, &fp, Duration::from_secs(3600), 1_000).unwrap();
        let (once, _) = create_with(&store, &fp, Duration::from_secs(60), true, 2_000).unwrap();
        let list = list(&store, 70_000).unwrap();
        let shown: Vec<(&str, bool, bool)> = list.iter().map(|i| (i.id.as_str(), i.expired, i.single_use)).collect();
        assert_eq!(shown, [(t.id.as_str(), false, false), (once.id.as_str(), true, true)]);
        assert!(!format!("{list:?}").contains(&t.secret), "never the secret");
        verify(&store, &fp, &once.to_string(), 3_000).unwrap();
        used(&store, &once.to_string()).unwrap();
        let e = verify(&store, &fp, &once.to_string(), 3_000).unwrap_err().to_string();
        assert!(e.contains("not known"), "used up: {e}");
        used(&store, &t.to_string()).unwrap();
        verify(&store, &fp, &t.to_string(), 3_000).unwrap();
        assert_eq!(revoke(&store, &t.id).unwrap(), format!("token {} revoked", t.id));
        assert!(verify(&store, &fp, &t.to_string(), 3_000).unwrap_err().to_string().contains("not known"));
        assert!(matches!(revoke(&store, &t.id), Err(Error::NotFound(_))));
    }
}
