//! The ingress proxy as the cluster runs it (ADR 16): the every-board app `bramble-ingress` on the
//! boards the leader's `[ingress] nodes` selects, and the config `bramble-ingress` it reads. Both
//! are made here from the leader's `[ingress]` section, the ingresses and the services, as
//! manifests an apply takes: the proxy is checked, stored, scheduled, rolled and described as any
//! app is. Pure.

use super::caddy::{self, Acme, Settings, Unserved};
use super::IngressConfig;
use bramble_proto::manifest::{parse_manifest, AppSpec, ConfigSpec, IngressSpec};
use bramble_proto::model::Service;
use std::collections::BTreeSet;

/// The proxy's app, its config and its local volume: names users may not apply or delete.
pub const NAME: &str = "bramble-ingress";
/// Where its config's files appear in the proxy.
pub const CONFIG_DIR: &str = "/etc/bramble-ingress";
/// The configuration file Caddy runs from there (reloaded through its admin socket when the
/// board rewrites it, and watched each second besides).
pub const CONFIG_FILE: &str = "caddy.json";
/// The ACME directory's CA certificate, beside it (when the leader names one).
const ACME_ROOT_FILE: &str = "acme-ca.pem";
/// Caddy's admin socket, in a tmpfs of the proxy's own (nothing outside its container reaches it).
pub const ADMIN_SOCKET: &str = "/run/caddy/admin.sock";

/// A TOML string literal (JSON's escapes are TOML's basic string's).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The proxy's app for `cfg`, mounting the secrets of `secrets` (those TLS certificates come
/// from). Errors are the manifest's, for `cfg`'s fields.
pub fn app(cfg: &IngressConfig, image: &str, secrets: &BTreeSet<String>) -> Result<AppSpec, String> {
    let nodes: Vec<String> = cfg.nodes.0.iter().map(|(k, v)| format!("{} = {}", quoted(k), quoted(v))).collect();
    let secrets: Vec<String> = secrets.iter().map(|s| quoted(s)).collect();
    // Go's heap held to three quarters of the limit: the rest is the binary and the stacks.
    let gomemlimit = format!("{}MiB", (cfg.memory.0 * 3 / 4) >> 20);
    let text = format!(
        "[[app]]\n\
         name = \"{NAME}\"\n\
         image = {image}\n\
         mode = \"every-board\"\n\
         host_network = true\n\
         command = [\"caddy\", \"run\", \"--config\", \"{CONFIG_DIR}/{CONFIG_FILE}\", \"--watch\"]\n\
         env = {{ PATH = \"/usr/local/bin:/usr/bin:/bin\", GOMEMLIMIT = \"{gomemlimit}\", HOME = \"/data\", XDG_DATA_HOME = \"/data\", XDG_CONFIG_HOME = \"/data\" }}\n\
         secrets = [{secrets}]\n\
         configs = [{{ name = \"{NAME}\", path = \"{CONFIG_DIR}\", reload = [\"caddy\", \"reload\", \"--config\", \"{CONFIG_DIR}/{CONFIG_FILE}\", \"--address\", \"unix/{ADMIN_SOCKET}\"] }}]\n\
         ports = [{{ name = \"http\", container = {http} }}, {{ name = \"https\", container = {https} }}]\n\
         resources = {{ memory = \"{memory}\" }}\n\
         update = {{ max_unavailable = 1, max_surge = 0 }}\n\
         [app.placement]\n\
         node_selector = {{ {nodes} }}\n\
         [[app.volumes]]\n\
         type = \"local\"\n\
         name = \"{NAME}\"\n\
         path = \"/data\"\n\
         [[app.volumes]]\n\
         type = \"tmpfs\"\n\
         path = \"/run/caddy\"\n\
         size = \"64Ki\"\n\
         [app.probes.readiness]\n\
         tcp = {{ port = {http} }}\n\
         period = \"1s\"\n",
        image = quoted(image),
        secrets = secrets.join(", "),
        http = cfg.http_port,
        https = cfg.https_port,
        memory = cfg.memory,
        nodes = nodes.join(", "),
    );
    let mut m = parse_manifest("[ingress]", &text).map_err(|e| e.to_string())?;
    Ok(m.apps.remove(0))
}

/// The proxy's config: Caddy's JSON for `ingresses` over `services`, and the ACME directory's CA
/// (`acme_root`, PEM) when there is one; and the backends it cannot serve.
pub fn config(
    cfg: &IngressConfig,
    ingresses: &[IngressSpec],
    services: &[Service],
    acme_root: Option<&str>,
) -> Result<(ConfigSpec, Vec<Unserved>), String> {
    let acme = cfg.acme_ca.as_ref().map(|ca| Acme {
        ca: ca.clone(),
        email: cfg.acme_email.clone(),
        ca_root: acme_root.map(|_| format!("{CONFIG_DIR}/{ACME_ROOT_FILE}")),
    });
    let settings = Settings {
        http_port: cfg.http_port,
        https_port: cfg.https_port,
        acme,
        storage: "/data/caddy".into(),
        admin_socket: Some(ADMIN_SOCKET.into()),
    };
    let (json, unserved) = caddy::config(ingresses, services, &settings);
    let mut files = std::collections::BTreeMap::new();
    files.insert(CONFIG_FILE.to_string(), serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    if let Some(pem) = acme_root {
        files.insert(ACME_ROOT_FILE.to_string(), pem.to_string());
    }
    let spec = ConfigSpec { name: bramble_proto::names::Name::new(NAME).map_err(|e| format!("{e}"))?, files };
    if let Some(p) = spec.check().into_iter().next() {
        return Err(format!("the proxy's config: {}", p.message));
    }
    Ok((spec, unserved))
}

/// The secrets the proxy mounts: those the ingresses' certificates are in.
pub fn secrets(ingresses: &[IngressSpec]) -> BTreeSet<String> {
    ingresses.iter().filter_map(|i| i.tls.as_ref()?.secret.as_ref()).map(|s| s.as_str().to_string()).collect()
}

/// What a user may not apply: the proxy's app and config (the leader's), and a local volume of
/// its name (the proxy's ACME account and keys are in it, on its boards).
pub fn reserved(
    apps: &[AppSpec],
    configs: &[ConfigSpec],
    cronjobs: &[bramble_proto::manifest::CronJobSpec],
) -> Vec<bramble_proto::wire::ObjectProblem> {
    let problem = |kind: &str, name: &str, field: &str, message: &str| bramble_proto::wire::ObjectProblem {
        kind: kind.into(),
        name: name.into(),
        field: field.into(),
        message: message.into(),
    };
    let mine = "is the leader's ingress proxy's (made from the leader's [ingress] and the ingresses)";
    let mut out = Vec::new();
    for a in apps.iter().filter(|a| a.name.as_str() == NAME) {
        out.push(problem(a.kind_word(), a.name.as_str(), "name", &format!("{NAME} {mine}")));
    }
    for c in configs.iter().filter(|c| c.name.as_str() == NAME) {
        out.push(problem("config", c.name.as_str(), "name", &format!("{NAME} {mine}")));
    }
    let templates = cronjobs.iter().map(|c| ("cronjob", c.name.as_str(), "job.", &c.job));
    let volumes = apps.iter().map(|a| (a.kind_word(), a.name.as_str(), "", a)).chain(templates);
    for (kind, name, at, a) in volumes {
        for (k, v) in a.volumes.iter().enumerate() {
            if v.name.as_ref().is_some_and(|n| n.as_str() == NAME) {
                let message = format!("the local volume {NAME} {mine}: name another");
                out.push(problem(kind, name, &format!("{at}volumes[{k}].name"), &message));
            }
        }
    }
    out
}

/// What is wrong with `cfg` (the field, and why), checked when the leader reads its file.
pub fn check(cfg: &IngressConfig) -> Option<(&'static str, String)> {
    if cfg.http_port == 0 || cfg.https_port == 0 || cfg.http_port == cfg.https_port {
        return Some((
            "http_port",
            format!(
                "expected two different ports from 1 to 65535, found http_port {} and https_port {}",
                cfg.http_port, cfg.https_port
            ),
        ));
    }
    if cfg.memory.0 < 32 << 20 {
        return Some(("memory", format!("expected at least 32Mi (Caddy idles at about 30 MB), found {}", cfg.memory)));
    }
    if let Some(ca) = &cfg.acme_ca {
        if !ca.starts_with("https://") || ca.len() > 2048 || ca.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Some(("acme_ca", format!("expected an https:// directory URL, found {ca:?}")));
        }
    }
    let image = cfg.image.as_deref()?;
    match app(cfg, image, &BTreeSet::new()) {
        Ok(_) => None,
        Err(e) => Some(("image", format!("the proxy's app would not apply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_is_an_every_board_app_on_the_selected_boards_reading_its_config() {
        let cfg = IngressConfig { image: Some("reg.lan:5000/caddy:2.6".into()), ..Default::default() };
        let secrets = BTreeSet::from(["shop-cert".to_string()]);
        let a = app(&cfg, "reg.lan:5000/caddy:2.6", &secrets).unwrap();
        assert!(a.every_board() && a.host_network);
        assert_eq!(a.placement.node_selector.0, [("ingress".to_string(), "true".to_string())].into());
        assert_eq!(a.secrets.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["shop-cert"]);
        assert_eq!(a.configs[0].path, CONFIG_DIR);
        let env: Vec<(String, &str)> = a.env.iter().map(|(k, v)| (k.0.clone(), v.as_str())).collect();
        assert!(env.contains(&("GOMEMLIMIT".to_string(), "96MiB")), "{env:?}");
        let ports: Vec<u16> = a.ports.iter().map(|p| p.container.0).collect();
        assert_eq!(ports, [80, 443]);
        // A hostile image string stays a string: no TOML escapes out of it.
        let e = app(&cfg, "x\"\nhost_network = false\n", &secrets).unwrap_err();
        assert!(e.contains("image"), "{e}");
        let bad = IngressConfig { http_port: 443, ..cfg.clone() };
        assert_eq!(check(&bad).unwrap().0, "http_port");
        let small = IngressConfig { memory: bramble_proto::quantity::Memory(8 << 20), ..cfg.clone() };
        assert_eq!(check(&small).unwrap().0, "memory");
        let acme = IngressConfig { acme_ca: Some("http://ca.lan/dir".into()), ..cfg.clone() };
        assert_eq!(check(&acme).unwrap().0, "acme_ca");
        assert_eq!(check(&cfg), None);
    }
}
