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
        return Some(IngressCertificate {
            source: "acme".into(),
            not_after_ms: None,
            problem: None,
            served: Vec::new(),
        });
    };
    let source = format!("secret {secret}");
    let Some(values) = values else {
        return Some(IngressCertificate {
            source,
            not_after_ms: None,
            problem: Some(format!("secret {secret} does not exist")),
            served: Vec::new(),
        });
    };
    let (Some(crt), Some(key)) = (values.get("tls.crt"), values.get("tls.key")) else {
        let problem = format!("secret {secret} needs tls.crt and tls.key (PEM)");
        return Some(IngressCertificate { source, not_after_ms: None, problem: Some(problem), served: Vec::new() });
    };
    Some(match check_server_pair(crt, key) {
        Err(e) => IngressCertificate {
            source,
            not_after_ms: None,
            problem: Some(format!("secret {secret}: {e}")),
            served: Vec::new(),
        },
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
            IngressCertificate { source, not_after_ms: Some(c.not_after_ms), problem, served: Vec::new() }
        }
    })
}

/// Whether `c`'s problem refuses an apply: any but a near end, which is said and served.
pub fn refuses(c: &IngressCertificate, now_ms: u64) -> bool {
    let ending = c.not_after_ms.is_some_and(|end| end > now_ms && end - now_ms < EXPIRING_WITHIN_MS);
    c.problem.is_some() && !(ending && c.problem.as_deref().is_some_and(|p| p.ends_with("update the secret")))
}

/// What is wrong with what a proxy serves for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedProblem {
    /// None served for it (or one for other names): ACME has not given one.
    Missing(String),
    /// It has ended or ends within two weeks: its renewal has not happened.
    Ending(String),
}

impl ServedProblem {
    pub fn message(&self) -> &str {
        match self {
            ServedProblem::Missing(m) | ServedProblem::Ending(m) => m,
        }
    }
}

/// What a proxy serves for `host`, judged at `now_ms`: its end, and what is wrong with it.
pub fn served(host: &str, leaf: Result<Vec<u8>, String>, now_ms: u64) -> (Option<u64>, Option<ServedProblem>) {
    use ServedProblem::{Ending, Missing};
    let der = match leaf {
        Ok(der) => der,
        Err(e) => return (None, Some(Missing(format!("no certificate served for {host}: {e}")))),
    };
    let Ok((_, end)) = bramble_transport::pki::validity_ms(&der) else {
        return (None, Some(Missing(format!("the certificate served for {host} does not parse"))));
    };
    let names = bramble_transport::pki::dns_names(&der);
    let problem = if !names.iter().any(|n| name_covers(n, host)) {
        Some(Missing(format!("the certificate served for {host} is for {}: ACME has not given one", names.join(", "))))
    } else if end <= now_ms {
        Some(Ending(format!("the certificate served for {host} has expired: its renewal failed")))
    } else if end - now_ms < EXPIRING_WITHIN_MS {
        Some(Ending(format!(
            "the certificate served for {host} ends in {} days: its renewal has not happened (bramble logs app/bramble-ingress)",
            (end - now_ms) / 86_400_000
        )))
    } else {
        None
    };
    (Some(end), problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;

    /// A certificate for `host` valid from `from` to `to` (year, month, day), and its key.
    fn pair(host: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> BTreeMap<String, Vec<u8>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let crt = params.self_signed(&key).unwrap().pem();
        [("tls.crt".to_string(), crt.into_bytes()), ("tls.key".to_string(), key.serialize_pem().into_bytes())].into()
    }

    #[test]
    fn a_certificate_ending_soon_is_said_and_served_an_expired_one_is_refused() {
        let text = "[[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\ntls = { secret = \"c\" }\nservice = \"web\"\nport = 80\n";
        let i = &parse_manifest("i.toml", text).unwrap().ingresses[0];
        // 2030-01-01T00:00:00Z.
        let now: u64 = 1_893_456_000_000;
        let fine = certificate(i, Some(&pair("shop.lan", (2029, 12, 1), (2030, 3, 1))), now).unwrap();
        assert_eq!((fine.problem.as_deref(), fine.not_after_ms), (None, Some(now + 59 * 86_400_000)));
        let soon = certificate(i, Some(&pair("shop.lan", (2029, 12, 1), (2030, 1, 6))), now).unwrap();
        assert_eq!(soon.problem.as_deref(), Some("secret c's certificate ends in 5 days: update the secret"));
        assert!(!refuses(&soon, now), "served meanwhile");
        let gone = certificate(i, Some(&pair("shop.lan", (2029, 12, 1), (2029, 12, 31))), now).unwrap();
        assert_eq!(gone.problem.as_deref(), Some("secret c's certificate has expired"));
        assert!(refuses(&gone, now));
        // Ending soon and for another name: the name is what is wrong, and it is refused.
        let both = certificate(i, Some(&pair("other.lan", (2029, 12, 1), (2030, 1, 2))), now).unwrap();
        assert!(refuses(&both, now), "{both:?}");
        let none = certificate(i, None, now).unwrap();
        assert_eq!(none.problem.as_deref(), Some("secret c does not exist"));
    }

    #[test]
    fn what_a_proxy_serves_is_judged_missing_or_ending() {
        let now: u64 = 1_893_456_000_000;
        let der = |host: &str, to: (i32, u8, u8)| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
            params.not_before = rcgen::date_time_ymd(2029, 12, 1);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let (end, problem) = served("secure.lan", Ok(der("secure.lan", (2030, 3, 1))), now);
        assert_eq!((end, problem), (Some(now + 59 * 86_400_000), None));
        let (_, problem) = served("secure.lan", Ok(der("secure.lan", (2030, 1, 4))), now);
        assert!(matches!(problem, Some(ServedProblem::Ending(m)) if m.contains("ends in 3 days")));
        let (_, problem) = served("secure.lan", Ok(der("other.lan", (2030, 3, 1))), now);
        assert!(matches!(problem, Some(ServedProblem::Missing(m)) if m.contains("is for other.lan")));
        let (end, problem) = served("secure.lan", Err("handshake failure".into()), now);
        assert!(end.is_none() && matches!(problem, Some(ServedProblem::Missing(_))));
    }
}
