//! An ingress's certificate from a secret, as the leader checks it: when it is applied (a key
//! that is not the certificate's, a certificate that does not name the host: apply errors), in
//! `describe ingress` and in the certificate's expiry event and metric.

use bramble_proto::manifest::IngressSpec;
use bramble_proto::wire::IngressCertificate;
use bramble_transport::pki::{check_server_pair, name_covers};
use std::collections::BTreeMap;

/// Said (an event, `describe`) when a certificate from a secret ends within this.
pub const EXPIRING_WITHIN_MS: u64 = 14 * 86_400_000;

/// `ingress`'s certificate: from `values` (its secret's keys, if it has a secret), at `now_ms`.
/// A problem other than a near end refuses an apply ([`refuses`]).
pub fn certificate(
    ingress: &IngressSpec,
    values: Option<&BTreeMap<String, Vec<u8>>>,
    now_ms: u64,
) -> Option<IngressCertificate> {
    let tls = ingress.tls.as_ref()?;
    let Some(secret) = &tls.secret else {
        return Some(IngressCertificate { source: "acme".into(), not_after_ms: None, problem: None });
    };
    let source = format!("secret {secret}");
    let Some(values) = values else {
        return Some(IngressCertificate {
            source,
            not_after_ms: None,
            problem: Some(format!("secret {secret} does not exist")),
        });
    };
    let (Some(crt), Some(key)) = (values.get("tls.crt"), values.get("tls.key")) else {
        let problem = format!("secret {secret} needs tls.crt and tls.key (PEM)");
        return Some(IngressCertificate { source, not_after_ms: None, problem: Some(problem) });
    };
    Some(match check_server_pair(crt, key) {
        Err(e) => IngressCertificate { source, not_after_ms: None, problem: Some(format!("secret {secret}: {e}")) },
        Ok(c) => {
            let problem = if !c.names.iter().any(|n| name_covers(n, &ingress.host)) {
                Some(format!(
                    "secret {secret}'s certificate is for {}, not {}",
                    if c.names.is_empty() { "no DNS name".into() } else { c.names.join(", ") },
                    ingress.host
                ))
            } else if c.not_after_ms <= now_ms {
                Some(format!("secret {secret}'s certificate has expired"))
            } else if c.not_after_ms - now_ms < EXPIRING_WITHIN_MS {
                Some(format!(
                    "secret {secret}'s certificate ends in {} days: update the secret",
                    (c.not_after_ms - now_ms) / 86_400_000
                ))
            } else {
                None
            };
            IngressCertificate { source, not_after_ms: Some(c.not_after_ms), problem }
        }
    })
}

/// Whether `c`'s problem refuses an apply: any but a near end, which is said and served.
pub fn refuses(c: &IngressCertificate, now_ms: u64) -> bool {
    let ending = c.not_after_ms.is_some_and(|end| end > now_ms && end - now_ms < EXPIRING_WITHIN_MS);
    c.problem.is_some() && !(ending && c.problem.as_deref().is_some_and(|p| p.ends_with("update the secret")))
}
