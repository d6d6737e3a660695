//! From an image config and an app's overrides to the exact process: argv, environment, working
//! directory and user, with Docker's and Kubernetes' rules.

use std::collections::BTreeMap;

/// Kubernetes' rules: `command` replaces the image's entrypoint (and drops its cmd), `args`
/// replaces the cmd.
pub fn argv(entrypoint: &[String], cmd: &[String], command: &[String], args: &[String]) -> Result<Vec<String>, String> {
    let v: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
        (false, true) => command.to_vec(),
        (true, false) => entrypoint.iter().chain(args).cloned().collect(),
        (false, false) => command.iter().chain(args).cloned().collect(),
    };
    if v.is_empty() {
        return Err("no command to run: the image has no entrypoint or cmd, and the app sets no command".into());
    }
    Ok(v)
}

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image's environment, then the app's (which wins by name); PATH is always set.
pub fn env(image: &[String], app: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let name = entry.split('=').next().unwrap_or("").to_string();
        match out.iter_mut().find(|e| e.split('=').next() == Some(name.as_str())) {
            Some(e) => *e = entry,
            None => out.push(entry),
        }
    };
    for e in image {
        set(e.clone());
    }
    for (k, v) in app {
        set(format!("{k}={v}"));
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// The uid, gid and supplementary groups for `user` (`""`, `uid`, `name`, `uid:gid`, `name:group`),
/// from the image's `/etc/passwd` and `/etc/group` texts (empty if the image has none).
pub fn user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>), String> {
    let users: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, name, primary) = if u.is_empty() {
        (0, Some("root"), 0)
    } else if let Ok(uid) = u.parse::<u32>() {
        let entry = users.iter().find(|f| f[2].parse::<u32>().ok() == Some(uid));
        (uid, entry.map(|f| f[0]), entry.and_then(|f| f[3].parse().ok()).unwrap_or(0))
    } else {
        let entry =
            users.iter().find(|f| f[0] == u).ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?;
        let uid = entry[2].parse().map_err(|_| format!("bad uid for {u:?} in the image's /etc/passwd"))?;
        (uid, Some(entry[0]), entry[3].parse().unwrap_or(0))
    };
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let entry = groups
                    .iter()
                    .find(|f| f[0] == g)
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?;
                entry[2].parse().map_err(|_| format!("bad gid for {g:?} in the image's /etc/group"))?
            }
        },
    };
    let extra: Vec<u32> = match name {
        Some(n) => groups
            .iter()
            .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|m| m == n)))
            .filter_map(|f| f[2].parse().ok())
            .filter(|x| *x != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_follows_kubernetes() {
        let (ep, cmd) = (s(&["/entry"]), s(&["--serve"]));
        assert_eq!(argv(&ep, &cmd, &[], &[]).unwrap(), s(&["/entry", "--serve"]));
        assert_eq!(argv(&ep, &cmd, &s(&["/bin/sh"]), &[]).unwrap(), s(&["/bin/sh"]));
        assert_eq!(argv(&ep, &cmd, &[], &s(&["-v"])).unwrap(), s(&["/entry", "-v"]));
        assert_eq!(argv(&ep, &cmd, &s(&["/x"]), &s(&["y"])).unwrap(), s(&["/x", "y"]));
        assert!(argv(&[], &[], &[], &[]).unwrap_err().contains("no command"));
    }

    #[test]
    fn env_merges_by_name() {
        let mut app = BTreeMap::new();
        app.insert("MODE".to_string(), "prod".to_string());
        app.insert("HOME".to_string(), "/data".to_string());
        assert_eq!(env(&s(&["HOME=/root", "PATH=/bin"]), &app), s(&["HOME=/data", "PATH=/bin", "MODE=prod"]));
        assert_eq!(env(&[], &BTreeMap::new())[0], DEFAULT_PATH);
    }

    #[test]
    fn users_and_groups_resolve_from_the_image() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n";
        let group = "root:x:0:\nweb:x:1001:\nvideo:x:44:web,pi\naudio:x:29:pi\n";
        assert_eq!(user("", passwd, group).unwrap(), (0, 0, vec![]));
        assert_eq!(user("web", passwd, group).unwrap(), (1000, 1001, vec![44]));
        assert_eq!(user("1000", passwd, group).unwrap(), (1000, 1001, vec![44]));
        assert_eq!(user("1000:29", passwd, group).unwrap(), (1000, 29, vec![44]));
        assert_eq!(user("web:audio", passwd, group).unwrap(), (1000, 29, vec![44]));
        assert_eq!(user("4242", passwd, group).unwrap(), (4242, 0, vec![]), "unknown numeric uids are fine");
        assert!(user("nobody", passwd, group).unwrap_err().contains("not in the image's /etc/passwd"));
        assert!(user("web:nogroup", passwd, group).unwrap_err().contains("not in the image's /etc/group"));
        assert_eq!(user("0", "", "").unwrap(), (0, 0, vec![]));
    }
}
