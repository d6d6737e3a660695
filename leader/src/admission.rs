//! What every write of apps, services and configs must pass wherever it comes from — an apply,
//! a dry run or a backup being restored: each object's own checks run again where they land
//! (the CLI ran them too), and what the cluster keeps for itself on its boards. Pure.

use crate::error::{Error, Result};
use bramble_proto::manifest::{AppSpec, ConfigSpec, CronJobSpec, Protocol, ServiceSpec, VolumeKind};
use bramble_proto::model::{App, Config, CronJob, Service};
use bramble_proto::wire::ObjectProblem;
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster keeps for itself on its boards: ports no app may take as a host port (the
/// leaders' QUIC port, etcd's, DNS, the metrics listener) and directories no host volume may be,
/// be inside or hold (the leader's data dir). Boards keep more of their own (agent.toml).
#[derive(Debug, Clone, Default)]
pub struct Reserved {
    /// (protocol, port, what it is)
    pub ports: Vec<(Protocol, u16, String)>,
    /// (what it is, normalized directory)
    pub dirs: Vec<(String, String)>,
}

impl Reserved {
    /// Etcd's ports and DNS, the leader's QUIC port and metrics listener, its data dir.
    pub fn of_leader(quic: u16, metrics: Option<u16>, data_dir: Option<&std::path::Path>) -> Reserved {
        let mut ports = vec![
            (Protocol::Udp, quic, "the leader's QUIC port".to_string()),
            (Protocol::Tcp, 2379, "etcd's client port".to_string()),
            (Protocol::Tcp, 2380, "etcd's peer port".to_string()),
            (Protocol::Udp, 53, "DNS".to_string()),
            (Protocol::Tcp, 53, "DNS".to_string()),
        ];
        ports.extend(metrics.map(|m| (Protocol::Tcp, m, "the leader's metrics listener".to_string())));
        let dirs = data_dir
            .and_then(|d| bramble_proto::hostpath::normalize(&d.display().to_string()).ok())
            .map(|d| vec![("the leader's data dir".to_string(), d)])
            .unwrap_or_default();
        Reserved { ports, dirs }
    }

    /// The ports pods may not reach (all but DNS, which pods need).
    pub fn control_ports(&self) -> Vec<(Protocol, u16)> {
        self.ports.iter().filter(|(_, port, _)| *port != 53).map(|(p, port, _)| (*p, *port)).collect()
    }

    /// The problems of `a` against what the cluster keeps.
    fn check(&self, a: &AppSpec) -> Vec<ObjectProblem> {
        let mut out = Vec::new();
        let name = a.name.as_str();
        let own = a.ports.iter().enumerate().map(|(i, p)| (format!("ports[{i}]"), p));
        let others = a.containers.iter().enumerate().flat_map(|(c, s)| {
            s.ports.iter().enumerate().map(move |(i, p)| (format!("containers[{c}].ports[{i}]"), p))
        });
        for (at, p) in own.chain(others) {
            // On the host network the container's port is the board's.
            let (h, field) = match (p.host, a.host_network) {
                (_, true) => (p.container, "container"),
                (Some(h), false) => (h, "host"),
                (None, false) => continue,
            };
            if let Some((proto, port, what)) = self.ports.iter().find(|(q, port, _)| *q == p.protocol && *port == h.0) {
                let proto = if *proto == Protocol::Udp { "udp" } else { "tcp" };
                let msg = format!("host port {port}/{proto} is the cluster's own ({what}); choose another");
                out.push(problem(a.kind_word(), name, format!("{at}.{field}"), msg));
            }
        }
        let dirs: Vec<(&str, &str)> = self.dirs.iter().map(|(w, d)| (w.as_str(), d.as_str())).collect();
        for (i, v) in a.volumes.iter().enumerate().filter(|(_, v)| v.kind == VolumeKind::Host) {
            if let Err(e) = bramble_proto::hostpath::check(v.host_path.as_deref().unwrap_or_default(), &dirs) {
                out.push(problem(a.kind_word(), name, format!("volumes[{i}].host_path"), e.to_string()));
            }
        }
        out
    }
}

pub fn problem(kind: &str, name: &str, field: impl Into<String>, message: impl Into<String>) -> ObjectProblem {
    ObjectProblem { kind: kind.into(), name: name.into(), field: field.into(), message: message.into() }
}

pub fn refuse(problems: Vec<ObjectProblem>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Problems(problems))
    }
}

/// The objects of a backup about to be restored, through the checks an apply makes: each must
/// decode, be named as its key says, and pass [`check`] (a hand-edited or hostile backup is no
/// way around them).
pub fn check_restored(objects: &std::collections::BTreeMap<String, String>, reserved: &Reserved) -> Result<()> {
    use crate::objects::{decode, keys};
    let (mut apps, mut services, mut configs, mut cronjobs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ingresses, mut secret_keys) = (Vec::new(), std::collections::BTreeMap::new());
    let mut problems = Vec::new();
    for (key, value) in objects {
        let named = |kind: &str, name: &str, prefix: &str| {
            (key.strip_prefix(prefix) != Some(name))
                .then(|| problem(kind, name, "", format!("stored under {key}, which names another object")))
        };
        if key.starts_with(keys::APPS) {
            let a: App = decode(key, value.as_bytes())?;
            problems.extend(named("app", a.spec.name.as_str(), keys::APPS));
            apps.push(a.spec);
        } else if key.starts_with(keys::SERVICES) {
            let s: Service = decode(key, value.as_bytes())?;
            problems.extend(named("service", s.spec.name.as_str(), keys::SERVICES));
            services.push(s.spec);
        } else if key.starts_with(keys::CONFIGS) {
            let c: Config = decode(key, value.as_bytes())?;
            problems.extend(named("config", c.spec.name.as_str(), keys::CONFIGS));
            configs.push(c.spec);
        } else if key.starts_with(keys::CRONJOBS) {
            let c: CronJob = decode(key, value.as_bytes())?;
            problems.extend(named("cronjob", c.spec.name.as_str(), keys::CRONJOBS));
            cronjobs.push(c.spec);
        } else if key.starts_with(keys::INGRESSES) {
            let i: bramble_proto::model::Ingress = decode(key, value.as_bytes())?;
            problems.extend(named("ingress", i.spec.name.as_str(), keys::INGRESSES));
            let name = i.spec.name.as_str().to_string();
            problems.extend(i.spec.check().into_iter().map(|p| problem("ingress", &name, p.field(), p.message)));
            ingresses.push(i.spec);
        } else if key.starts_with(keys::REGISTRIES) {
            let r: bramble_proto::model::Registry = decode(key, value.as_bytes())?;
            let name = r.spec.name.as_str().to_string();
            problems.extend(named("registry", &name, keys::REGISTRIES));
            problems.extend(r.spec.check().into_iter().map(|p| problem("registry", &name, p.field(), p.message)));
        } else if key.starts_with(keys::SECRETS) {
            let s: crate::trust::secrets::StoredSecret = decode(key, value.as_bytes())?;
            secret_keys.insert(s.meta.name.clone(), s.sizes.keys().cloned().collect());
        } else if key.starts_with(keys::REVISIONS) {
            let spec: AppSpec = decode(key, value.as_bytes())?;
            problems.extend(
                spec.check().into_iter().map(|p| problem(spec.kind_word(), spec.name.as_str(), p.field(), p.message)),
            );
            problems.extend(reserved.check(&spec));
        }
    }
    problems.extend(check_cronjobs(reserved, &cronjobs));
    // Ingresses against the backup's own services and secrets: one claim per host and path, a
    // backend's service and port, a certificate's keys.
    let by_name = services.iter().map(|s| (s.name.as_str().to_string(), s.clone())).collect();
    problems.extend(crate::ingress::check(&ingresses, &[], &by_name, &secret_keys));
    refuse(problems)?;
    check(reserved, &apps, &services, &configs)
}

/// Every object's own checks, run again where they land (the CLI ran them too), and what the
/// cluster keeps for itself.
pub fn check(reserved: &Reserved, apps: &[AppSpec], services: &[ServiceSpec], configs: &[ConfigSpec]) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for a in apps {
        let name = a.name.as_str();
        if !seen.insert(("app", name)) {
            problems.push(problem(a.kind_word(), name, "", "listed twice"));
        }
        problems.extend(a.check().into_iter().map(|p| problem(a.kind_word(), name, p.field(), p.message)));
        problems.extend(reserved.check(a));
    }
    for s in services {
        let name = s.name.as_str();
        if !seen.insert(("service", name)) {
            problems.push(problem("service", name, "", "listed twice"));
        }
        problems.extend(s.check().into_iter().map(|p| problem("service", name, p.field(), p.message)));
    }
    for c in configs {
        let name = c.name.as_str();
        if !seen.insert(("config", name)) {
            problems.push(problem("config", name, "", "listed twice"));
        }
        problems.extend(c.check().into_iter().map(|p| problem("config", name, p.field(), p.message)));
    }
    refuse(problems)
}

/// Cron jobs' own checks, where they land: the schedule parsed as it was decoded; the zone must
/// be one this leader's zoneinfo has; the template passes what an app's does (as `job.FIELD`).
pub fn check_cronjobs(reserved: &Reserved, cronjobs: &[CronJobSpec]) -> Vec<ObjectProblem> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for c in cronjobs {
        let name = c.name.as_str();
        if !seen.insert(name) {
            out.push(problem("cronjob", name, "", "listed twice"));
        }
        let own = c.check();
        let zone_ok = !own.iter().any(|p| p.field() == "timezone");
        out.extend(own.into_iter().map(|p| problem("cronjob", name, p.field(), p.message)));
        if zone_ok {
            if let Err(e) = crate::cron::zone(c.timezone.as_deref()) {
                out.push(problem("cronjob", name, "timezone", e.to_string()));
            }
        }
        out.extend(reserved.check(&c.job_named(c.name.clone())).into_iter().map(|p| ObjectProblem {
            kind: "cronjob".into(),
            field: format!("job.{}", p.field),
            ..p
        }));
    }
    out
}

/// Start order across the cluster: every name in an applied app's `after` is an app or a job
/// (applied now or already stored), and no app comes, through others, after itself. `graph` is every app's
/// `after` as it will be once the apply lands (stored apps overlaid with the applied ones);
/// `fleeting` the jobs among them with a `ttl_after_finished`: nothing may start after one (once
/// it is deleted, what starts after it would wait for it for ever).
pub fn check_after(
    applied: &[AppSpec],
    graph: &BTreeMap<String, Vec<String>>,
    fleeting: &BTreeSet<String>,
) -> Vec<ObjectProblem> {
    let mut out = Vec::new();
    let mut cycles: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for a in applied {
        let name = a.name.as_str();
        for (i, dep) in a.after.iter().enumerate() {
            if !graph.contains_key(dep.as_str()) {
                let msg = format!(
                    "expected the name of an app or job (in this apply or the cluster), found {:?}",
                    dep.as_str()
                );
                out.push(problem(a.kind_word(), name, format!("after[{i}]"), msg));
            } else if fleeting.contains(dep.as_str()) {
                let msg = format!(
                    "job {dep} has ttl_after_finished: it is deleted once finished, and then nothing could start \
                     after it (drop one of the two)"
                );
                out.push(problem(a.kind_word(), name, format!("after[{i}]"), msg));
            }
        }
        if fleeting.contains(name) {
            let mut waiting: Vec<&str> = graph
                .iter()
                .filter(|(other, deps)| {
                    deps.iter().any(|d| d == name) && !applied.iter().any(|x| x.name.as_str() == *other)
                })
                .map(|(other, _)| other.as_str())
                .collect();
            waiting.dedup();
            if !waiting.is_empty() {
                let msg = format!(
                    "{} start after this job: with ttl_after_finished it is deleted once finished, and then they \
                     could not start (drop one of the two)",
                    waiting.join(", ")
                );
                out.push(problem(a.kind_word(), name, "ttl_after_finished", msg));
            }
        }
        if let Some(path) = cycle_through(name, graph) {
            if cycles.insert(path.iter().cloned().collect()) {
                let msg = format!("start order has a cycle: {} -> {name}", path.join(" -> "));
                out.push(problem(a.kind_word(), name, "after", msg));
            }
        }
    }
    out
}

/// A path of `after` edges from `start` back to itself (`start` first), if there is one.
fn cycle_through(start: &str, graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        start: &str,
        graph: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) && walk(next, start, graph, seen, path) {
                return true;
            }
        }
        path.pop();
        false
    }
    let mut path = Vec::new();
    walk(start, start, graph, &mut BTreeSet::new(), &mut path).then_some(path)
}

#[cfg(test)]
mod after_tests {
    use super::*;
    use bramble_proto::manifest::parse_manifest;

    fn apps(text: &str) -> Vec<AppSpec> {
        parse_manifest("t.toml", text).unwrap().apps
    }

    fn graph(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter().map(|(a, deps)| (a.to_string(), deps.iter().map(|d| d.to_string()).collect())).collect()
    }

    #[test]
    fn start_order_names_apps_and_has_no_cycle() {
        let web = apps("[[app]]\nname = \"web\"\nimage = \"r/w:1\"\nafter = [\"db\", \"cache\"]\n");
        // db stored, cache nowhere.
        let g = graph(&[("web", &["db", "cache"]), ("db", &[])]);
        let none = BTreeSet::new();
        let p = check_after(&web, &g, &none);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].field.as_str(), p[0].name.as_str()), ("after[1]", "web"));
        assert!(p[0].message.contains("found \"cache\""), "{}", p[0].message);
        // db (stored) comes after migrate, which comes after web: a cycle through the apply.
        let g = graph(&[("web", &["db", "cache"]), ("db", &["migrate"]), ("migrate", &["web"]), ("cache", &[])]);
        let p = check_after(&web, &g, &none);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "after");
        assert_eq!(p[0].message, "start order has a cycle: web -> db -> migrate -> web");
        // Two apps of one apply in one cycle: said once.
        let both = apps(
            "[[app]]\nname = \"a\"\nimage = \"r/w:1\"\nafter = [\"b\"]\n[[app]]\nname = \"b\"\nimage = \"r/w:1\"\nafter = [\"a\"]\n",
        );
        let p = check_after(&both, &graph(&[("a", &["b"]), ("b", &["a"])]), &none);
        assert_eq!(p.len(), 1, "{p:?}");
        // A diamond is no cycle.
        let g = graph(&[("web", &["db", "cache"]), ("db", &["disk"]), ("cache", &["disk"]), ("disk", &[])]);
        assert!(check_after(&web, &g, &none).is_empty());
    }

    #[test]
    fn nothing_starts_after_a_job_that_deletes_itself() {
        let g = graph(&[("web", &["migrate"]), ("migrate", &[])]);
        let fleeting: BTreeSet<String> = ["migrate".to_string()].into();
        // The app names a stored job with a ttl.
        let web = apps("[[app]]\nname = \"web\"\nimage = \"r/w:1\"\nafter = [\"migrate\"]\n");
        let p = check_after(&web, &g, &fleeting);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "after[0]");
        assert!(p[0].message.starts_with("job migrate has ttl_after_finished"), "{}", p[0].message);
        // The job gets a ttl while a stored app starts after it.
        let job =
            parse_manifest("t.toml", "[[job]]\nname = \"migrate\"\nimage = \"r/m:1\"\nttl_after_finished = \"1h\"\n")
                .unwrap()
                .jobs;
        let p = check_after(&job, &g, &fleeting);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].kind.as_str(), p[0].field.as_str()), ("job", "ttl_after_finished"));
        assert!(p[0].message.starts_with("web start after this job"), "{}", p[0].message);
        // Without the ttl, an app may start after a job.
        assert!(check_after(&web, &g, &BTreeSet::new()).is_empty());
    }
}
