//! Kubernetes manifests as Bramble's (issue 34): Deployment, StatefulSet (without stable
//! identities: said), DaemonSet (an every-board app), Job, CronJob, Service, ConfigMap and Ingress;
//! a Secret is a note (its values are never printed: create it with `bramble secret create`); a
//! Namespace is left out. A pod template's containers map to the app's own and `[[app.containers]]`,
//! its init containers to `[[app.init]]`. What does not map is a [`Problem`] with its line.

use super::compose::object_name;
use super::yaml::{Node, Value};
use super::{Converted, Problem};
use toml::Value as T;

struct Ctx {
    /// The file of the document being converted.
    file: String,
    problems: Vec<Problem>,
}

impl Ctx {
    fn problem(&mut self, node: &Node, field: String, why: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: node.line,
            col: node.col,
            field,
            why: why.into(),
            warning: false,
        });
    }

    fn warn(&mut self, node: &Node, field: String, why: impl Into<String>) {
        self.problem(node, field, why);
        if let Some(p) = self.problems.last_mut() {
            p.warning = true;
        }
    }
}

/// Says each key of `node` that is neither mapped (`known`) nor left out on purpose (`left`, with
/// why, a warning): nothing is dropped in silence.
fn rest(cx: &mut Ctx, node: &Node, at: &str, known: &[&str], left: &[(&str, &str)]) {
    for (k, v) in node.entries().unwrap_or_default() {
        if known.contains(&k.as_str()) {
            continue;
        }
        match left.iter().find(|(l, _)| l == k) {
            Some((_, why)) => cx.warn(v, format!("{at}.{k}"), format!("left out: {why}")),
            None => cx.problem(v, format!("{at}.{k}"), "not mapped to Bramble"),
        }
    }
}

fn s(n: Option<&Node>) -> Option<String> {
    n.and_then(Node::str).map(String::from)
}

fn int(n: Option<&Node>) -> Option<i64> {
    n.and_then(Node::str).and_then(|s| s.parse().ok())
}

fn strings(n: Option<&Node>) -> Vec<T> {
    n.and_then(Node::items).unwrap_or_default().iter().filter_map(Node::str).map(|x| T::String(x.into())).collect()
}

fn secs(n: Option<&Node>) -> Option<T> {
    int(n).map(|v| T::String(format!("{v}s")))
}

/// Every object of documents `docs` (each with its file; a `List`'s items are documents).
pub fn convert(docs: &[(&str, &Node)], out: &mut Converted) {
    let mut cx = Ctx { file: String::new(), problems: Vec::new() };
    // A Service selects pods by labels: the workloads' template labels name their app.
    let mut selectors: Vec<(Vec<(String, String)>, String)> = Vec::new();
    for (_, d) in docs {
        let kind = s(d.get("kind")).unwrap_or_default();
        if matches!(kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicationController" | "Pod") {
            // A Pod's own labels; a workload's template's.
            let meta = if kind == "Pod" { Some(*d) } else { d.get("spec").and_then(|s| s.get("template")) };
            let labels = meta
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels"))
                .and_then(Node::entries)
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| (k.clone(), v.str().unwrap_or_default().to_string()))
                .collect();
            selectors
                .push((labels, object_name(&s(d.get("metadata").and_then(|m| m.get("name"))).unwrap_or_default())));
        }
    }
    for (file, d) in docs {
        cx.file = file.to_string();
        let kind = s(d.get("kind")).unwrap_or_default();
        let Some(name) = s(d.get("metadata").and_then(|m| m.get("name"))) else {
            cx.problem(d, "metadata.name".into(), "expected a name");
            continue;
        };
        let obj = object_name(&name);
        let what = format!("{kind} {name}");
        let spec = d.get("spec");
        match kind.as_str() {
            "Pod" => {
                // A bare pod: an app of one replica (Bramble replaces it where Kubernetes would not).
                let Some(mut app) = pod_template(&mut cx, &format!("Pod/{name}"), Some(d)) else { continue };
                app.insert("name".into(), T::String(obj));
                out.objects.push((cx.file.clone(), d.line, what, "app", app));
            }
            "PersistentVolumeClaim" => out.notes.push(format!(
                "{file}:{}: PersistentVolumeClaim {name}: pods that mount it get the local volume {obj} on their board",
                d.line
            )),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicationController" => {
                let at = format!("{kind}/{name}");
                let Some(spec) = spec else {
                    cx.problem(d, format!("{at}.spec"), "expected a spec");
                    continue;
                };
                if kind == "StatefulSet" {
                    cx.warn(d, at.clone(), "a StatefulSet's replicas get no stable names or volumes of their own: an app whose replicas share its settings (local volumes keep a replica on its board)");
                }
                let Some(mut app) = pod_template(&mut cx, &at, spec.get("template")) else { continue };
                app.insert("name".into(), T::String(obj.clone()));
                if kind == "DaemonSet" {
                    app.insert("mode".into(), T::String("every-board".into()));
                } else if let Some(r) = int(spec.get("replicas")) {
                    app.insert("replicas".into(), T::Integer(r));
                }
                let known = ["replicas", "selector", "template", "strategy", "minReadySeconds"];
                let left = [
                    ("revisionHistoryLimit", "Bramble keeps an app's last 10 revisions"),
                    ("serviceName", "replicas are reached through the app's services"),
                    ("podManagementPolicy", "replicas start as Bramble's rollouts start them"),
                ];
                rest(&mut cx, spec, &format!("{at}.spec"), &known, &left);
                if let Some(m) = secs(spec.get("minReadySeconds")) {
                    let mut u = toml::Table::new();
                    u.insert("min_ready".into(), m);
                    app.insert("update".into(), T::Table(u));
                }
                if let Some(ru) = spec.get("strategy").and_then(|s| s.get("rollingUpdate")) {
                    let mut u = app.get("update").and_then(T::as_table).cloned().unwrap_or_default();
                    for (from, to) in [("maxSurge", "max_surge"), ("maxUnavailable", "max_unavailable")] {
                        if let Some(v) = ru.get(from).and_then(Node::str) {
                            u.insert(to.into(), v.parse::<i64>().map_or_else(|_| T::String(v.into()), T::Integer));
                        }
                    }
                    app.insert("update".into(), T::Table(u));
                }
                out.objects.push((cx.file.clone(), d.line, what, "app", app));
            }
            "Job" => {
                let at = format!("Job/{name}");
                let Some(job) = spec.and_then(|sp| job_of(&mut cx, &at, sp)) else { continue };
                let mut job = job;
                job.insert("name".into(), T::String(obj));
                out.objects.push((cx.file.clone(), d.line, what, "job", job));
            }
            "CronJob" => {
                let at = format!("CronJob/{name}");
                let Some(spec) = spec else { continue };
                let Some(job) =
                    spec.get("jobTemplate").and_then(|t| t.get("spec")).and_then(|sp| job_of(&mut cx, &at, sp))
                else {
                    cx.problem(spec, format!("{at}.spec.jobTemplate"), "expected a job template");
                    continue;
                };
                let mut c = toml::Table::new();
                c.insert("name".into(), T::String(obj));
                if let Some(sched) = s(spec.get("schedule")) {
                    c.insert("schedule".into(), T::String(sched));
                }
                if let Some(z) = s(spec.get("timeZone")) {
                    c.insert("timezone".into(), T::String(z));
                }
                if let Some(p) = s(spec.get("concurrencyPolicy")) {
                    c.insert("concurrency".into(), T::String(p.to_ascii_lowercase()));
                }
                if let Some(d) = secs(spec.get("startingDeadlineSeconds")) {
                    c.insert("starting_deadline".into(), d);
                }
                let mut h = toml::Table::new();
                if let Some(v) = int(spec.get("successfulJobsHistoryLimit")) {
                    h.insert("successful".into(), T::Integer(v));
                }
                if let Some(v) = int(spec.get("failedJobsHistoryLimit")) {
                    h.insert("failed".into(), T::Integer(v));
                }
                if !h.is_empty() {
                    c.insert("history".into(), T::Table(h));
                }
                if spec.get("suspend").and_then(Node::bool) == Some(true) {
                    c.insert("suspend".into(), T::Boolean(true));
                }
                c.insert("job".into(), T::Table(job));
                out.objects.push((cx.file.clone(), d.line, what, "cronjob", c));
            }
            "Service" => {
                let at = format!("Service/{name}");
                let Some(spec) = spec else { continue };
                let selector: Vec<(String, String)> = spec
                    .get("selector")
                    .and_then(Node::entries)
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.str().unwrap_or_default().to_string()))
                    .collect();
                let app = selectors
                    .iter()
                    .find(|(labels, _)| !selector.is_empty() && selector.iter().all(|kv| labels.contains(kv)))
                    .map(|(_, app)| app.clone());
                let Some(app) = app else {
                    cx.problem(
                        spec,
                        format!("{at}.spec.selector"),
                        "selects no workload in these files (a Bramble service names its app)",
                    );
                    continue;
                };
                if let Some(t) = s(spec.get("type")).filter(|t| t != "ClusterIP") {
                    cx.warn(spec, format!("{at}.spec.type"), format!("{t}: a Bramble service has a virtual IP in the cluster; reach it from the LAN with an app's host ports or an ingress"));
                }
                let mut ports = Vec::new();
                for p in spec.get("ports").and_then(Node::items).unwrap_or_default() {
                    let mut m = toml::Table::new();
                    let Some(port) = int(p.get("port")) else {
                        cx.problem(p, format!("{at}.spec.ports"), "expected port");
                        continue;
                    };
                    m.insert("port".into(), T::Integer(port));
                    if let Some(n) = s(p.get("name")) {
                        m.insert("name".into(), T::String(object_name(&n)));
                    }
                    if let Some(t) = p.get("targetPort").and_then(Node::str) {
                        m.insert(
                            "target".into(),
                            t.parse::<i64>().map_or_else(|_| T::String(object_name(t)), T::Integer),
                        );
                    }
                    if s(p.get("protocol")).as_deref() == Some("UDP") {
                        m.insert("protocol".into(), T::String("udp".into()));
                    }
                    ports.push(T::Table(m));
                }
                let mut t = toml::Table::new();
                t.insert("name".into(), T::String(obj));
                t.insert("app".into(), T::String(app));
                t.insert("ports".into(), T::Array(ports));
                out.objects.push((cx.file.clone(), d.line, what, "service", t));
            }
            "ConfigMap" => {
                let mut files = toml::Table::new();
                for (k, v) in d.get("data").and_then(Node::entries).unwrap_or_default() {
                    files.insert(k.clone(), T::String(v.str().unwrap_or_default().to_string()));
                }
                if d.get("binaryData").is_some() {
                    cx.problem(
                        d,
                        format!("ConfigMap/{name}.binaryData"),
                        "binary files do not map (a config holds text)",
                    );
                }
                let mut t = toml::Table::new();
                t.insert("name".into(), T::String(obj));
                t.insert("files".into(), T::Table(files));
                out.objects.push((cx.file.clone(), d.line, what, "config", t));
            }
            "Ingress" => ingress(&mut cx, &name, d, out),
            "Secret" => {
                let keys: Vec<&str> = ["data", "stringData"]
                    .iter()
                    .filter_map(|k| d.get(k).and_then(Node::entries))
                    .flatten()
                    .map(|(k, _)| k.as_str())
                    .collect();
                out.notes.push(format!(
                    "{file}:{}: Secret {name}: its values are not printed; create it: bramble secret create {obj} {}",
                    d.line,
                    keys.iter().map(|k| format!("--from-file {k}=FILE")).collect::<Vec<_>>().join(" ")
                ));
            }
            "Namespace" => {
                out.notes.push(format!("{file}:{}: Namespace {name}: Bramble has one namespace; left out", d.line))
            }
            k => cx.problem(d, format!("{k}/{name}"), format!("kind {k} does not map to Bramble")),
        }
    }
    out.problems.extend(cx.problems);
}

fn job_of(cx: &mut Ctx, at: &str, spec: &Node) -> Option<toml::Table> {
    let mut job = pod_template(cx, at, spec.get("template"))?;
    for (from, to) in
        [("completions", "completions"), ("parallelism", "parallelism"), ("backoffLimit", "backoff_limit")]
    {
        if let Some(v) = int(spec.get(from)) {
            job.insert(to.into(), T::Integer(v));
        }
    }
    if let Some(d) = secs(spec.get("activeDeadlineSeconds")) {
        job.insert("active_deadline".into(), d);
    }
    if let Some(d) = secs(spec.get("ttlSecondsAfterFinished")) {
        job.insert("ttl_after_finished".into(), d);
    }
    // A job's own restart policy is Bramble's (a failed run is retried as a new one).
    job.remove("restart");
    Some(job)
}

/// A pod template as an app's table (without its name).
fn pod_template(cx: &mut Ctx, at: &str, template: Option<&Node>) -> Option<toml::Table> {
    let Some(pod) = template.and_then(|t| t.get("spec")) else {
        cx.problem(
            template.unwrap_or(&Node { line: 0, col: 0, value: Value::Null }),
            format!("{at}.spec.template"),
            "expected a pod template",
        );
        return None;
    };
    let containers = pod.get("containers").and_then(Node::items).unwrap_or_default();
    let Some((main, others)) = containers.split_first() else {
        cx.problem(pod, format!("{at}.spec.template.spec.containers"), "expected at least one container");
        return None;
    };
    let mut app = container(cx, &format!("{at}.containers[0]"), main, true);
    let mut volumes = Vec::new();
    let declared: Vec<(String, &Node)> = pod
        .get("volumes")
        .and_then(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| Some((s(v.get("name"))?, v)))
        .collect();
    let (mut configs, mut secrets) = (Vec::new(), Vec::new());
    for c in containers {
        for m in c.get("volumeMounts").and_then(Node::items).unwrap_or_default() {
            let (Some(vname), Some(path)) = (s(m.get("name")), s(m.get("mountPath"))) else { continue };
            let Some((_, v)) = declared.iter().find(|(n, _)| *n == vname) else {
                cx.problem(m, format!("{at}.volumeMounts"), format!("no volume {vname}"));
                continue;
            };
            let ro = m.get("readOnly").and_then(Node::bool) == Some(true);
            let mut t = toml::Table::new();
            t.insert("path".into(), T::String(path.clone()));
            if v.get("emptyDir").is_some() {
                t.insert("type".into(), T::String("tmpfs".into()));
            } else if let Some(pvc) = v.get("persistentVolumeClaim") {
                t.insert("type".into(), T::String("local".into()));
                t.insert("name".into(), T::String(object_name(&s(pvc.get("claimName")).unwrap_or(vname.clone()))));
            } else if let Some(hp) = v.get("hostPath") {
                t.insert("type".into(), T::String("host".into()));
                t.insert("host_path".into(), T::String(s(hp.get("path")).unwrap_or_default()));
                t.insert("node_label".into(), T::String(super::compose::HOST_PATH_LABEL.into()));
            } else if let Some(cm) = v.get("configMap") {
                let mut c = toml::Table::new();
                c.insert("name".into(), T::String(object_name(&s(cm.get("name")).unwrap_or_default())));
                c.insert("path".into(), T::String(path));
                configs.push(T::Table(c));
                continue;
            } else if let Some(sec) = v.get("secret") {
                secrets.push(T::String(object_name(&s(sec.get("secretName")).unwrap_or_default())));
                cx.warn(
                    m,
                    format!("{at}.volumeMounts"),
                    format!("secret volumes appear at /run/secrets/NAME/KEY in Bramble, not at {path}"),
                );
                continue;
            } else {
                cx.problem(
                    v,
                    format!("{at}.volumes"),
                    format!("volume {vname}: only emptyDir, persistentVolumeClaim, hostPath, configMap and secret map"),
                );
                continue;
            }
            if ro {
                t.insert("read_only".into(), T::Boolean(true));
            }
            volumes.push(T::Table(t));
        }
    }
    if !volumes.is_empty() {
        app.insert("volumes".into(), T::Array(volumes));
    }
    if !configs.is_empty() {
        app.insert("configs".into(), T::Array(configs));
    }
    if !secrets.is_empty() {
        app.insert("secrets".into(), T::Array(secrets));
    }
    let side: Vec<T> = others
        .iter()
        .enumerate()
        .map(|(i, c)| T::Table(container(cx, &format!("{at}.containers[{}]", i + 1), c, false)))
        .collect();
    if !side.is_empty() {
        app.insert("containers".into(), T::Array(side));
    }
    let init: Vec<T> = pod
        .get("initContainers")
        .and_then(Node::items)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| T::Table(container(cx, &format!("{at}.initContainers[{i}]"), c, false)))
        .collect();
    if !init.is_empty() {
        app.insert("init".into(), T::Array(init));
    }
    if let Some(sel) = pod.get("nodeSelector").and_then(Node::entries) {
        let mut t = toml::Table::new();
        for (k, v) in sel {
            t.insert(k.clone(), T::String(v.str().unwrap_or_default().into()));
        }
        let mut p = toml::Table::new();
        p.insert("node_selector".into(), T::Table(t));
        app.insert("placement".into(), T::Table(p));
    }
    if pod.get("hostNetwork").and_then(Node::bool) == Some(true) {
        app.insert("host_network".into(), T::Boolean(true));
    }
    if let Some(g) = secs(pod.get("terminationGracePeriodSeconds")) {
        app.insert("stop_grace".into(), g);
    }
    match s(pod.get("restartPolicy")).as_deref() {
        Some("OnFailure") => {
            app.insert("restart".into(), T::String("on-failure".into()));
        }
        Some("Never") => {
            app.insert("restart".into(), T::String("never".into()));
        }
        _ => {}
    }
    let known = [
        "containers",
        "initContainers",
        "volumes",
        "nodeSelector",
        "hostNetwork",
        "terminationGracePeriodSeconds",
        "restartPolicy",
    ];
    let left = [
        ("dnsPolicy", "pods resolve through their board's cluster DNS"),
        ("schedulerName", "Bramble's leader places replicas"),
    ];
    rest(cx, pod, &format!("{at}.spec.template.spec"), &known, &left);
    Some(app)
}

/// A container as a table: the app's own (`main`), or one of `[[app.containers]]`/`[[app.init]]`.
fn container(cx: &mut Ctx, at: &str, c: &Node, main: bool) -> toml::Table {
    let mut t = toml::Table::new();
    if !main {
        t.insert("name".into(), T::String(object_name(&s(c.get("name")).unwrap_or_default())));
    }
    match s(c.get("image")) {
        Some(i) => {
            t.insert("image".into(), T::String(i));
        }
        None => cx.problem(c, format!("{at}.image"), "expected an image"),
    }
    let command = strings(c.get("command"));
    if !command.is_empty() {
        t.insert("command".into(), T::Array(command));
    }
    let args = strings(c.get("args"));
    if !args.is_empty() {
        t.insert("args".into(), T::Array(args));
    }
    let (mut env, mut secret_env) = (toml::Table::new(), toml::Table::new());
    for e in c.get("env").and_then(Node::items).unwrap_or_default() {
        let Some(k) = s(e.get("name")) else { continue };
        if let Some(v) = e.get("value") {
            env.insert(k, T::String(v.str().unwrap_or_default().into()));
        } else if let Some(r) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            let (n, key) = (s(r.get("name")).unwrap_or_default(), s(r.get("key")).unwrap_or_default());
            secret_env.insert(k, T::String(format!("{}/{key}", object_name(&n))));
        } else {
            cx.problem(e, format!("{at}.env.{k}"), "only value and valueFrom.secretKeyRef map");
        }
    }
    if !env.is_empty() {
        t.insert("env".into(), T::Table(env));
    }
    if !secret_env.is_empty() && main {
        t.insert("secret_env".into(), T::Table(secret_env));
    }
    let mut ports = Vec::new();
    for p in c.get("ports").and_then(Node::items).unwrap_or_default() {
        let Some(cp) = int(p.get("containerPort")) else { continue };
        let mut m = toml::Table::new();
        m.insert("container".into(), T::Integer(cp));
        if let Some(n) = s(p.get("name")) {
            m.insert("name".into(), T::String(object_name(&n)));
        }
        if let Some(h) = int(p.get("hostPort")) {
            m.insert("host".into(), T::Integer(h));
        }
        if s(p.get("protocol")).as_deref() == Some("UDP") {
            m.insert("protocol".into(), T::String("udp".into()));
        }
        ports.push(T::Table(m));
    }
    if !ports.is_empty() {
        t.insert("ports".into(), T::Array(ports));
    }
    if let Some(limits) = c.get("resources").and_then(|r| r.get("limits").or_else(|| r.get("requests"))) {
        let mut r = toml::Table::new();
        for k in ["cpu", "memory"] {
            if let Some(v) = s(limits.get(k)) {
                r.insert(k.into(), T::String(v));
            }
        }
        if !r.is_empty() {
            t.insert("resources".into(), T::Table(r));
        }
    }
    let mut probes = toml::Table::new();
    for (from, to) in [("readinessProbe", "readiness"), ("livenessProbe", "liveness"), ("startupProbe", "startup")] {
        let Some(p) = c.get(from) else { continue };
        let mut q = toml::Table::new();
        if let Some(h) = p.get("httpGet") {
            let mut m = toml::Table::new();
            m.insert("path".into(), T::String(s(h.get("path")).unwrap_or_else(|| "/".into())));
            let port = h.get("port").and_then(Node::str).unwrap_or_default();
            m.insert("port".into(), port.parse::<i64>().map_or_else(|_| T::String(object_name(port)), T::Integer));
            q.insert("http".into(), T::Table(m));
        } else if let Some(h) = p.get("tcpSocket") {
            let mut m = toml::Table::new();
            let port = h.get("port").and_then(Node::str).unwrap_or_default();
            m.insert("port".into(), port.parse::<i64>().map_or_else(|_| T::String(object_name(port)), T::Integer));
            q.insert("tcp".into(), T::Table(m));
        } else if let Some(e) = p.get("exec") {
            q.insert("exec".into(), T::Array(strings(e.get("command"))));
        } else {
            cx.problem(p, format!("{at}.{from}"), "only httpGet, tcpSocket and exec probes map");
            continue;
        }
        for (k8s, ours) in
            [("initialDelaySeconds", "initial_delay"), ("periodSeconds", "period"), ("timeoutSeconds", "timeout")]
        {
            if let Some(v) = secs(p.get(k8s)) {
                q.insert(ours.into(), v);
            }
        }
        for (k8s, ours) in [("failureThreshold", "failure_threshold"), ("successThreshold", "success_threshold")] {
            if let Some(v) = int(p.get(k8s)) {
                q.insert(ours.into(), T::Integer(v));
            }
        }
        probes.insert(to.into(), T::Table(q));
    }
    if !probes.is_empty() {
        t.insert("probes".into(), T::Table(probes));
    }
    if let Some(add) = c.get("securityContext").and_then(|s| s.get("capabilities")).and_then(|c| c.get("add")) {
        let mut sec = toml::Table::new();
        sec.insert("cap_add".into(), T::Array(strings(Some(add))));
        t.insert("security".into(), T::Table(sec));
    }
    if c.get("securityContext").and_then(|s| s.get("privileged")).and_then(Node::bool) == Some(true) {
        cx.problem(
            c,
            format!("{at}.securityContext.privileged"),
            "privileged containers do not map (ask for devices and capabilities)",
        );
    }
    if let Some(w) = s(c.get("workingDir")) {
        t.insert("workdir".into(), T::String(w));
    }
    let known = [
        "name",
        "image",
        "command",
        "args",
        "env",
        "ports",
        "resources",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "securityContext",
        "workingDir",
        "volumeMounts",
    ];
    let left = [
        ("imagePullPolicy", "a board pulls an image it does not hold, by digest when the tag moves"),
        ("terminationMessagePath", "the exit code and the last output are kept"),
        ("terminationMessagePolicy", "the exit code and the last output are kept"),
    ];
    rest(cx, c, at, &known, &left);
    t
}

fn ingress(cx: &mut Ctx, name: &str, d: &Node, out: &mut Converted) {
    let at = format!("Ingress/{name}");
    let Some(spec) = d.get("spec") else { return };
    let tls: Vec<(Vec<String>, String)> = spec
        .get("tls")
        .and_then(Node::items)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let hosts = t
                .get("hosts")
                .and_then(Node::items)
                .unwrap_or_default()
                .iter()
                .filter_map(Node::str)
                .map(String::from)
                .collect();
            (hosts, object_name(&s(t.get("secretName")).unwrap_or_default()))
        })
        .collect();
    let rules = spec.get("rules").and_then(Node::items).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let Some(host) = s(rule.get("host")) else {
            cx.problem(rule, format!("{at}.spec.rules[{i}].host"), "a Bramble ingress names its host");
            continue;
        };
        let mut paths = Vec::new();
        for p in rule.get("http").and_then(|h| h.get("paths")).and_then(Node::items).unwrap_or_default() {
            let svc = p.get("backend").and_then(|b| b.get("service"));
            let (Some(service), Some(port)) = (s(svc.and_then(|s| s.get("name"))), svc.and_then(|s| s.get("port")))
            else {
                cx.problem(p, format!("{at}.spec.rules[{i}].http.paths"), "expected backend.service.name and port");
                continue;
            };
            let mut m = toml::Table::new();
            m.insert("path".into(), T::String(s(p.get("path")).unwrap_or_else(|| "/".into())));
            if s(p.get("pathType")).as_deref() == Some("Exact") {
                m.insert("match".into(), T::String("exact".into()));
            }
            m.insert("service".into(), T::String(object_name(&service)));
            let port = match (int(port.get("number")), s(port.get("name"))) {
                (Some(n), _) => T::Integer(n),
                (None, Some(n)) => T::String(object_name(&n)),
                _ => {
                    cx.problem(port, format!("{at}.spec.rules[{i}].http.paths"), "expected port.number or port.name");
                    continue;
                }
            };
            m.insert("port".into(), port);
            paths.push(T::Table(m));
        }
        let mut t = toml::Table::new();
        let obj = if rules.len() == 1 { object_name(name) } else { object_name(&format!("{name}-{i}")) };
        t.insert("name".into(), T::String(obj));
        t.insert("host".into(), T::String(host.clone()));
        if let Some((_, secret)) = tls.iter().find(|(hosts, _)| hosts.contains(&host)) {
            let mut tt = toml::Table::new();
            tt.insert("secret".into(), T::String(secret.clone()));
            t.insert("tls".into(), T::Table(tt));
        }
        t.insert("paths".into(), T::Array(paths));
        out.objects.push((cx.file.clone(), rule.line, format!("Ingress {name} ({host})"), "ingress", t));
    }
}
