//! A registry's credentials from a secret's keys: `username` and `password`, or `token` (sent as
//! `Bearer`), or a Docker `config.json` (key `.dockerconfigjson` or `config.json`) whose `auths`
//! names the host. Checked by the leader when a `[[registry]]` is applied and by the board that
//! uses them; no I/O.

use std::collections::BTreeMap;
use std::fmt;

/// What a board sends a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: String },
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: <redacted> }}")
            }
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// The keys a Docker config may be under.
pub const DOCKER_CONFIG_KEYS: [&str; 2] = [".dockerconfigjson", "config.json"];

fn text(values: &BTreeMap<String, Vec<u8>>, key: &str) -> Result<Option<String>, String> {
    match values.get(key) {
        None => Ok(None),
        Some(v) => {
            let s = std::str::from_utf8(v).map_err(|_| format!("key {key} is not UTF-8"))?;
            let s = s.trim_end_matches(['\n', '\r']);
            if s.is_empty() || s.contains(['\n', '\r']) {
                return Err(format!("key {key} must be one non-empty line"));
            }
            Ok(Some(s.to_string()))
        }
    }
}

/// The host a Docker config's `auths` key names: `https://index.docker.io/v1/` → `docker.io`.
fn auths_host(key: &str) -> String {
    let k = key.split_once("://").map_or(key, |(_, rest)| rest);
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => k,
    }
}

/// The credentials in `values` for `host`.
pub fn from_secret(host: &str, values: &BTreeMap<String, Vec<u8>>) -> Result<Credentials, String> {
    let (user, pass, token) = (text(values, "username")?, text(values, "password")?, text(values, "token")?);
    let docker = DOCKER_CONFIG_KEYS.iter().find_map(|k| values.get(*k).map(|v| (*k, v)));
    let kinds = [user.is_some() || pass.is_some(), token.is_some(), docker.is_some()];
    let expected =
        "expected username and password, token, or a Docker config.json (key .dockerconfigjson or config.json)";
    match kinds.iter().filter(|k| **k).count() {
        0 => return Err(format!("no credentials in it: {expected}")),
        1 => {}
        _ => return Err(format!("more than one kind of credentials in it: {expected}, one of them")),
    }
    if let Some(t) = token {
        return Ok(Credentials::Token(t));
    }
    if let Some((key, json)) = docker {
        return docker_config(host, key, json);
    }
    match (user, pass) {
        (Some(username), Some(password)) => {
            if username.contains(':') {
                return Err("username may not contain ':'".into());
            }
            Ok(Credentials::Basic { username, password })
        }
        (Some(_), None) => Err("username without password".into()),
        _ => Err("password without username".into()),
    }
}

fn docker_config(host: &str, key: &str, json: &[u8]) -> Result<Credentials, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("{key} is not JSON: {e}"))?;
    let auths = v.get("auths").and_then(|a| a.as_object()).ok_or_else(|| format!("{key} has no \"auths\" object"))?;
    let want = auths_host(host);
    let (_, entry) = auths.iter().find(|(k, _)| auths_host(k) == want).ok_or_else(|| {
        let named: Vec<String> = auths.keys().map(|k| auths_host(k)).collect();
        format!(
            "{key} has no entry for {host} (it names {})",
            if named.is_empty() { "none".into() } else { named.join(", ") }
        )
    })?;
    let field = |f: &str| entry.get(f).and_then(|x| x.as_str()).filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(t) = field("registrytoken") {
        return Ok(Credentials::Token(t));
    }
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Ok(Credentials::Basic { username, password });
    }
    let Some(auth) = field("auth") else {
        return Err(format!("{key}: the entry for {host} has no auth, username and password, or registrytoken"));
    };
    let decoded = base64_decode(auth.trim())
        .ok_or_else(|| format!("{key}: the entry for {host} has an auth that is not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| format!("{key}: the entry for {host} has an auth that is not UTF-8"))?;
    match decoded.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => {
            Ok(Credentials::Basic { username: u.to_string(), password: p.to_string() })
        }
        _ => Err(format!("{key}: the entry for {host} has an auth that is not user:password")),
    }
}

/// Standard base64 with optional padding; `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(kv: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn each_kind_of_credentials_reads() {
        let basic = Credentials::Basic { username: "pi".into(), password: "raspberry".into() };
        assert_eq!(
            from_secret("r.lan", &secret(&[("username", "pi"), ("password", "raspberry\n")])),
            Ok(basic.clone())
        );
        assert_eq!(from_secret("r.lan", &secret(&[("token", "abc")])), Ok(Credentials::Token("abc".into())));
        // `echo -n pi:raspberry | base64`
        let cfg = r#"{"auths":{"https://r.lan:5000/v1/":{"auth":"cGk6cmFzcGJlcnJ5"}}}"#;
        assert_eq!(from_secret("r.lan:5000", &secret(&[(".dockerconfigjson", cfg)])), Ok(basic.clone()));
        let hub = r#"{"auths":{"https://index.docker.io/v1/":{"username":"pi","password":"raspberry"}}}"#;
        assert_eq!(from_secret("docker.io", &secret(&[("config.json", hub)])), Ok(basic));
        let tok = r#"{"auths":{"ghcr.io":{"registrytoken":"t0k"}}}"#;
        assert_eq!(from_secret("ghcr.io", &secret(&[("config.json", tok)])), Ok(Credentials::Token("t0k".into())));
        assert!(!format!("{:?}", Credentials::Token("t0k".into())).contains("t0k"));
        assert!(!format!("{:?}", from_secret("r", &secret(&[("username", "u"), ("password", "sekrit")])))
            .contains("sekrit"));
    }

    #[test]
    fn what_is_not_credentials_says_why() {
        let e = |kv: &[(&str, &str)]| from_secret("r.lan", &secret(kv)).unwrap_err();
        assert!(e(&[("tls.crt", "x")]).contains("no credentials in it"));
        assert!(e(&[("username", "pi")]).contains("username without password"));
        assert!(e(&[("password", "x")]).contains("password without username"));
        assert!(e(&[("username", "a:b"), ("password", "x")]).contains("may not contain ':'"));
        assert!(e(&[("token", "a"), ("username", "u"), ("password", "p")]).contains("more than one kind"));
        assert!(e(&[("token", "a\nb")]).contains("one non-empty line"));
        assert!(e(&[("config.json", "{")]).contains("is not JSON"));
        assert!(e(&[("config.json", "{}")]).contains("no \"auths\" object"));
        let other = r#"{"auths":{"other.lan":{"auth":"cGk6cmFzcGJlcnJ5"}}}"#;
        assert!(e(&[("config.json", other)]).contains("no entry for r.lan (it names other.lan)"));
        assert!(e(&[("config.json", r#"{"auths":{"r.lan":{"auth":"!!"}}}"#)]).contains("not base64"));
        assert!(e(&[("config.json", r#"{"auths":{"r.lan":{"auth":"cGk="}}}"#)]).contains("not user:password"));
        assert!(e(&[("config.json", r#"{"auths":{"r.lan":{}}}"#)]).contains("has no auth"));
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("cGk6cmFzcGJlcnJ5").unwrap(), b"pi:raspberry");
        assert_eq!(base64_decode("cGk=").unwrap(), b"pi");
        assert_eq!(base64_decode("cGk").unwrap(), b"pi");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a b").is_none());
    }
}
