//! Paths on a board that an app may mount: judged by components, never by string prefixes.
//!
//! A path is first brought to one spelling ([`normalize`]: `//`, a trailing `/` and `.` go; `..` is
//! refused, since it can only be judged against the real tree), then compared component by
//! component. The leader checks at apply and the agent again before it mounts; the agent also asks
//! the board's own allow-list (`[volumes] host_paths` in agent.toml).

/// The board's system: a host path inside one of these, or above one (`/var` holds `/var/lib`),
/// is refused whatever a board allows.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib",
    "/var/backups",
    "/var/run",
    "/var/spool",
];

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPathError {
    #[error("expected an absolute path, found {0:?}")]
    NotAbsolute(String),
    #[error("expected a path without .., found {0:?}")]
    Parent(String),
    #[error("/ is the whole board; choose a data directory")]
    Root,
    #[error("expected at most {MAX_PATH} bytes, found {0}")]
    TooLong(usize),
    #[error("a path may not hold a NUL byte")]
    Nul,
    #[error("{path} {how} the board's system directory {system}; choose a data directory such as /srv/NAME")]
    System { path: String, how: &'static str, system: String },
    #[error("{path} {how} {what} {dir}")]
    Protected { path: String, how: &'static str, what: String, dir: String },
}

/// The longest path accepted (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// `p` in one spelling: absolute, components joined by single slashes, no `.`, no trailing slash.
pub fn normalize(p: &str) -> Result<String, HostPathError> {
    if p.len() > MAX_PATH {
        return Err(HostPathError::TooLong(p.len()));
    }
    if p.contains('\0') {
        return Err(HostPathError::Nul);
    }
    if !p.starts_with('/') {
        return Err(HostPathError::NotAbsolute(p.to_string()));
    }
    let mut out = String::with_capacity(p.len());
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(HostPathError::Parent(p.to_string())),
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The components of a normalized path (none for `/`).
fn parts(p: &str) -> impl Iterator<Item = &str> + Clone {
    p.split('/').filter(|c| !c.is_empty())
}

/// Whether normalized `path` is `dir` or inside it, by components.
pub fn within(path: &str, dir: &str) -> bool {
    let mut p = parts(path);
    parts(dir).all(|d| p.next() == Some(d))
}

/// How `path` relates to `dir`: "is", "is inside" or "holds" — or none.
fn relation(path: &str, dir: &str) -> Option<&'static str> {
    let (a, b) = (parts(path).count(), parts(dir).count());
    if within(path, dir) {
        Some(if a == b { "is" } else { "is inside" })
    } else if within(dir, path) {
        Some("holds")
    } else {
        None
    }
}

/// Normalizes `p` and checks it against the board's system, `/`, and `protected` (pairs of a
/// description and a normalized directory, such as `("the agent's data dir", "/var/lib/bramble")`):
/// a path equal to, inside or above any of them is refused.
pub fn check(p: &str, protected: &[(&str, &str)]) -> Result<String, HostPathError> {
    let path = normalize(p)?;
    if path == "/" {
        return Err(HostPathError::Root);
    }
    for s in SYSTEM_DIRS {
        if let Some(how) = relation(&path, s) {
            return Err(HostPathError::System { path, how, system: s.to_string() });
        }
    }
    for (what, dir) in protected {
        if let Some(how) = relation(&path, dir) {
            return Err(HostPathError::Protected { path, how, what: what.to_string(), dir: dir.to_string() });
        }
    }
    Ok(path)
}

/// Whether normalized `path` is inside one of `allowed` (normalized directories).
pub fn allowed<'a>(path: &str, allowed: impl IntoIterator<Item = &'a str>) -> bool {
    allowed.into_iter().any(|a| within(path, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling() {
        assert_eq!(normalize("/srv/media").unwrap(), "/srv/media");
        assert_eq!(normalize("//srv//media/").unwrap(), "/srv/media");
        assert_eq!(normalize("/srv/./media/.").unwrap(), "/srv/media");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("///").unwrap(), "/");
        assert_eq!(normalize("srv"), Err(HostPathError::NotAbsolute("srv".into())));
        assert_eq!(normalize("/srv/../etc"), Err(HostPathError::Parent("/srv/../etc".into())));
        assert_eq!(normalize("/a\0b"), Err(HostPathError::Nul));
        assert!(matches!(normalize(&"/a".repeat(3000)), Err(HostPathError::TooLong(6000))));
    }

    #[test]
    fn components_not_prefixes() {
        assert!(within("/srv/media", "/srv"));
        assert!(within("/srv", "/srv"));
        assert!(!within("/srvx", "/srv"));
        assert!(!within("/srv", "/srv/media"));
        assert!(within("/anything", "/"));
    }

    #[test]
    fn the_system_its_parents_and_doubled_slashes_are_refused() {
        let data = [("the agent's data dir", "/data/bramble")];
        for bad in [
            "/",
            "//",
            "/etc",
            "//etc",
            "/etc/",
            "/./etc",
            "/etc/ssh",
            "/var",
            "/var/lib",
            "//var/lib/bramble/leader",
            "/var/lib/bramble/agent/pki",
            "/usr",
            "/root",
            "/home",
            "/home/pi",
            "/proc/1/root",
            "/run/bramble",
            "/data",
            "/data/bramble",
            "//data/bramble/../x",
            "/data/bramble/agent",
        ] {
            assert!(check(bad, &data).is_err(), "{bad} must be refused");
        }
        for good in
            ["/srv", "/srv/media", "//srv//media/", "/media/usb", "/mnt/nas", "/data/photos", "/var/log", "/opt/x"]
        {
            assert!(check(good, &data).is_ok(), "{good} must pass");
        }
        assert_eq!(
            check("//var", &[]).unwrap_err().to_string(),
            "/var holds the board's system directory /var/lib; choose a data directory such as /srv/NAME"
        );
        assert_eq!(check("/data", &data).unwrap_err().to_string(), "/data holds the agent's data dir /data/bramble");
    }

    #[test]
    fn the_board_allows_by_components() {
        let list = ["/srv", "/media/usb"];
        assert!(allowed("/srv/x", list));
        assert!(allowed("/media/usb", list));
        assert!(!allowed("/media", list));
        assert!(!allowed("/srvx", list));
        assert!(!allowed("/srv", []));
    }
}
