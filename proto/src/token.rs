//! Join tokens: `BR1<ca-sha256>::<id>.<secret>`.
//!
//! Like k3s's `K10<ca-hash>::<credentials>`, the token pins the cluster CA (the SHA-256 of its DER
//! certificate, in hex) so a new agent trusts only the right leader, and carries a secret the leader
//! checks. The `id` names the token in the leader's store (which keeps only a hash of the secret).

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "BR1";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: String,
    /// 6–16 lowercase alphanumerics.
    pub id: String,
    /// 16–64 lowercase alphanumerics.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed join token: {0}")]
pub struct TokenError(&'static str);

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or(TokenError("expected it to start with \"BR1\" (as printed by `bramble token create`)"))?;
        let (fp, cred) = rest.split_once("::").ok_or(TokenError("expected BR1<ca-sha256>::<id>.<secret>"))?;
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(TokenError("expected 64 lowercase hex digits of the CA fingerprint after \"BR1\""));
        }
        let (id, secret) = cred.split_once('.').ok_or(TokenError("expected <id>.<secret> after \"::\""))?;
        let alnum = |v: &str, min, max| {
            (min..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !alnum(id, 6, 16) {
            return Err(TokenError("expected a token id of 6 to 16 lowercase letters or digits"));
        }
        if !alnum(secret, 16, 64) {
            return Err(TokenError("expected a token secret of 16 to 64 lowercase letters or digits"));
        }
        Ok(JoinToken { ca_fingerprint: fp.to_string(), id: id.to_string(), secret: secret.to_string() })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}::{}.{}", self.ca_fingerprint, self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let fp = "ab".repeat(32);
        let t: JoinToken = format!("BR1{fp}::abc123.0123456789abcdef0123").parse().unwrap();
        assert_eq!(t.id, "abc123");
        assert_eq!(t.to_string().parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            String::new(),
            format!("K10{fp}::abc123.0123456789abcdef"),
            format!("BR1{}::abc123.0123456789abcdef", &fp[2..]),
            format!("BR1{fp}abc123.0123456789abcdef"),
            format!("BR1{fp}::abc.0123456789abcdef"),
            format!("BR1{fp}::abc123.short"),
            format!("BR1{}::abc123.0123456789abcdef", fp.to_uppercase()),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }
}
