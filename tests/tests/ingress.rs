//! Ingress end to end (issue 32): three boards in namespaces, two labelled `ingress=true`; the
//! leader's `[ingress]` names a Caddy image (Debian's caddy on busybox, from the lab's registry),
//! so the leader runs the proxy as the every-board app `bramble-ingress` on those two and
//! configures it from the ingresses. Requests come from the leader's namespace, a client on the
//! LAN, with `Host:` headers (curl) and TLS from a secret (a certificate openssl made); an
//! ingress changed is served again within seconds (printed); a rolling update of the backend under
//! Apache's `ab` through the ingress fails no request; the other ingress board serves the same
//! when the first is cut off the LAN.

use bramble_tests::ingress::{proxies, push_caddy, run_proxy, AGENT_TOML};
use bramble_tests::load::{web_app, Ab};
use bramble_tests::process::Proc;
use bramble_tests::{text, wait_for, Cluster};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// curl from the client namespace (the leader's): `(status, body)`, or why it failed.
fn curl(c: &Cluster, args: &[&str]) -> Result<(u16, String), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.lab.ns(0), "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (Debian's curl; scripts/test installs it)");
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// `agents` boards that may run the proxy, the busybox image and the Caddy image pushed.
fn lab(agents: usize) -> (Cluster, bramble_tests::registry::Registry, String, String) {
    let (c, registry, image) = bramble_tests::cluster::with_busybox(agents, AGENT_TOML);
    let caddy = push_caddy(&c, &registry);
    (c, registry, image, caddy)
}

/// A self-signed certificate for `san` (`DNS:shop.lan`, `IP:10.0.0.1`) and its key, by openssl.
fn openssl_cert(dir: &std::path::Path, name: &str, san: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "90"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName={san}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    (crt, key)
}

#[test]
fn ingresses_route_by_host_and_path_with_tls_through_the_proxy_the_leader_runs() {
    let (mut c, _registry, image, caddy) = lab(3);
    for b in ["board-1", "board-2"] {
        c.ok(&["label", "node", b, "ingress=true"]);
    }
    let (board1, board2) = (c.lab.addr(1), c.lab.addr(2));

    // The apps, their services, a TLS secret and two ingresses — before any proxy runs.
    let probe = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
    let web = |version: &str| web_app("web", &image, 2, version, "", probe);
    let api = web_app("api", &image, 1, "9", "", probe);
    let (crt, key) = openssl_cert(c.dir.path(), "shop.lan", "DNS:shop.lan");
    c.ok(&[
        "secret",
        "create",
        "shop-cert",
        "--from-file",
        &format!("tls.crt={}", crt.display()),
        "--from-file",
        &format!("tls.key={}", key.display()),
    ]);
    let ingresses = "[[ingress]]\nname = \"shop\"\nhost = \"shop.lan\"\ntls = { secret = \"shop-cert\" }\n\
                     [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n\
                     [[ingress.paths]]\npath = \"/api\"\nservice = \"api\"\nport = 80\n\
                     [[ingress]]\nname = \"plain\"\nhost = \"grafana.lan\"\nservice = \"web\"\nport = 80\n";
    let file = c.write("apps.toml", &format!("{}{api}{ingresses}", web("1")));
    c.ok(&["apply", "-f", &file]);
    let got = c.ok(&["get", "ingresses"]);
    assert!(got.contains("shop.lan") && got.contains("grafana.lan"), "{got}");
    // No proxy is configured yet: the ingress says so.
    let said = wait_for("the ingress says it has no proxy", Duration::from_secs(20), || {
        let d = c.ok(&["describe", "ingress", "plain"]);
        d.contains("names no image").then_some(d)
    });
    assert!(said.contains("IngressUnserved"), "{said}");
    // A certificate whose key is another's is refused at its line, and nothing is stored.
    let (_, other_key) = openssl_cert(c.dir.path(), "other", "DNS:shop.lan");
    c.ok(&[
        "secret",
        "create",
        "mismatched",
        "--from-file",
        &format!("tls.crt={}", crt.display()),
        "--from-file",
        &format!("tls.key={}", other_key.display()),
    ]);
    let bad = c.write(
        "mismatched.toml",
        "[[ingress]]\nname = \"wrong\"\nhost = \"shop.lan\"\ntls = { secret = \"mismatched\" }\nservice = \"web\"\nport = 80\n",
    );
    let out = c.cli(&["apply", "-f", &bad]);
    let err = text(&out.stderr);
    assert!(err.contains("mismatched.toml:4:") && err.contains("tls.key is not the key of tls.crt"), "{err}");
    assert!(!c.ok(&["get", "ingresses"]).contains("wrong"), "nothing of a refused apply is stored");
    // A user may not take the proxy's names, nor its volume (its ACME keys are in it).
    let bad = c.write(
        "bad.toml",
        &format!(
            "[[app]]\nname = \"peek\"\nimage = \"{image}\"\n\
             [[app.volumes]]\ntype = \"local\"\nname = \"bramble-ingress\"\npath = \"/x\"\n"
        ),
    );
    let out = c.cli(&["apply", "-f", &bad]);
    assert!(!out.status.success() && text(&out.stderr).contains("volumes[0].name"), "{}", text(&out.stderr));
    let out = c.cli(&["delete", "app", "bramble-ingress"]);
    assert!(!out.status.success() && text(&out.stderr).contains("leader's ingress proxy"), "{}", text(&out.stderr));

    // The leader's [ingress] names the image: it runs the proxy on the two ingress boards.
    run_proxy(&mut c, &format!("image = \"{caddy}\"\n"), &["board-1", "board-2"]);

    // 1. Host and path pick the backend; https with the secret's certificate; http redirects.
    let by_host = wait_for("grafana.lan served by web", Duration::from_secs(30), || {
        curl(&c, &["-H", "Host: grafana.lan", &format!("http://{board1}/")]).ok().filter(|(s, _)| *s == 200)
    });
    assert!(by_host.1.contains(" v1"), "{by_host:?}");
    let resolve = format!("shop.lan:443:{board1}");
    let cacert = crt.display().to_string();
    let tls = |path: &str| curl(&c, &["--resolve", &resolve, "--cacert", &cacert, &format!("https://shop.lan{path}")]);
    let api_body = wait_for("https://shop.lan/api served by api", Duration::from_secs(30), || {
        tls("/api/x").ok().filter(|(s, _)| *s == 200)
    });
    assert!(api_body.1.contains(" v9"), "the /api prefix goes to api: {api_body:?}");
    let root = tls("/").expect("https://shop.lan/");
    assert!(root.0 == 200 && root.1.contains(" v1"), "/ goes to web: {root:?}");
    let plain = curl(&c, &["-H", "Host: shop.lan", &format!("http://{board1}/api")]).expect("http");
    assert_eq!(plain.0, 308, "http:// of a TLS host redirects: {plain:?}");

    // 2. A changed ingress is served within seconds (the config goes to the boards, the proxy
    //    reloads it by itself).
    let changed = c.write(
        "plain.toml",
        "[[ingress]]\nname = \"plain\"\nhost = \"grafana.lan\"\n\
         [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n\
         [[ingress.paths]]\npath = \"/v2\"\nservice = \"api\"\nport = 80\n",
    );
    // diff and a dry run say what would change, and change nothing.
    let diff = c.cli(&["diff", "-f", &changed]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff.stderr));
    assert!(
        text(&diff.stdout).contains("ingress/plain (new)") && text(&diff.stdout).contains("+path = \"/v2\""),
        "{}",
        text(&diff.stdout)
    );
    let dry = c.ok(&["apply", "--dry-run", "-f", &changed]);
    assert!(dry.contains("ingress/plain") && dry.contains("configured"), "{dry}");
    assert!(!c.ok(&["get", "ingress", "plain", "-o", "toml"]).contains("/v2"), "a dry run stores nothing");
    let t = Instant::now();
    c.ok(&["apply", "-f", &changed]);
    let served = wait_for("the new path served", Duration::from_secs(30), || {
        curl(&c, &["-H", "Host: grafana.lan", &format!("http://{board1}/v2")]).ok().filter(|(_, b)| b.contains(" v9"))
    });
    eprintln!("ingress change -> served through the proxy: {:?} ({})", t.elapsed(), served.1);
    // The board reloaded the proxy through its admin socket (the config's reload command).
    let events = wait_for("the proxy's Reloaded events", Duration::from_secs(10), || {
        let e = c.ok(&["events"]);
        (e.matches("Reloaded").count() >= 2).then_some(e)
    });
    assert!(!events.contains("ReloadFailed"), "{events}");

    // 3. A rolling update of web under ab through the ingress: not one request fails.
    let ab = Ab::start_with(&c.lab.ns(0), &format!("http://{board1}/"), 4, &["Host: grafana.lan"]);
    std::thread::sleep(Duration::from_secs(2));
    let file = c.write("web.toml", &web("2"));
    c.ok(&["apply", "-f", &file]);
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "120s"]);
    assert!(out.status.success(), "web rolls out: {}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let ab = ab.finish();
    eprintln!(
        "ab through the ingress during web's rollout: {} complete, {} failed, {} non-2xx",
        ab.complete, ab.failed, ab.non_2xx
    );
    assert_eq!((ab.failed, ab.non_2xx), (0, 0), "ab saw failures: {}", ab.output);
    assert!(ab.complete > 50, "ab really ran: {}", ab.output);
    let after = curl(&c, &["-H", "Host: grafana.lan", &format!("http://{board1}/")]).expect("after");
    assert!(after.1.contains(" v2"), "{after:?}");

    // 4. The first ingress board cut off the LAN: the other serves the same, TLS too.
    let down = Command::new("ip").args(["netns", "exec", &c.lab.ns(1), "ip", "link", "set", "eth0", "down"]).status();
    assert!(down.map(|s| s.success()).unwrap_or(false), "cut board-1 off");
    let resolve2 = format!("shop.lan:443:{board2}");
    let other = wait_for("board-2 serves shop.lan", Duration::from_secs(30), || {
        curl(&c, &["--resolve", &resolve2, "--cacert", &cacert, "https://shop.lan/api/y"])
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    assert!(other.1.contains(" v9"), "{other:?}");
    assert!(curl(&c, &["-H", "Host: grafana.lan", &format!("http://{board1}/")]).is_err(), "board-1 is cut off");
    let _ = Command::new("ip").args(["netns", "exec", &c.lab.ns(1), "ip", "link", "set", "eth0", "up"]).status();

    // describe ingress: hosts, backends and their ready endpoints, the certificate, the proxies.
    let d = c.ok(&["describe", "ingress", "shop"]);
    assert!(d.contains("shop.lan") && d.contains("api") && d.contains("secret shop-cert, ends in 89 days"), "{d}");
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["describe", "ingress", "shop", "-o", "json"])).unwrap();
    let backends = v["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{v}");
    assert!(backends.iter().all(|b| b["ready"].as_u64() >= Some(1) && b["upstream"].is_string()), "{v}");
    assert_eq!(v["proxies"].as_array().map(Vec::len), Some(2), "{v}");
    c.ok(&["delete", "app", "web", "api"]);
    c.remove_containers();
}

/// ACME (HTTP-01) in the lab: Debian's pebble on the leader's namespace (its directory at the
/// leader's address, its own certificate trusted through `acme_ca_root`), pebble-challtestsrv as
/// the LAN's DNS answering every name with the ingress board's address. The proxy gets a
/// certificate for `secure.lan` from pebble and serves it; restarted, it serves the same one from
/// its local volume without asking pebble again.
#[test]
fn an_acme_ingress_gets_its_certificate_from_pebble_and_keeps_it_across_a_restart() {
    let (mut c, _registry, image, caddy) = lab(2);
    c.ok(&["label", "node", "board-1", "ingress=true"]);
    let (leader, board1) = (c.lab.addr(0), c.lab.addr(1));
    let dir = c.dir.path().to_path_buf();
    let (pebble_crt, pebble_key) = openssl_cert(&dir, "pebble", &format!("IP:{leader}"));
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("{leader}:14000"),
        "managementListenAddress": format!("{leader}:15000"),
        "certificate": pebble_crt,
        "privateKey": pebble_key,
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let dns = format!("{leader}:8053");
    let _dns = Proc::spawn(
        "pebble-challtestsrv",
        &c.lab.ns(0),
        Path::new("/usr/bin/pebble-challtestsrv"),
        &args(&["-defaultIPv4", &board1, "-defaultIPv6", "", "-dns01", &dns, "-http01", "", "-https01", ""])
            .into_iter()
            .chain(args(&["-tlsalpn01", "", "-management", &format!("{leader}:8055")]))
            .collect::<Vec<_>>(),
        &dir.join("challtestsrv.log"),
    );
    let pebble_log = dir.join("pebble.log");
    let _pebble = Proc::spawn_env(
        "pebble",
        &c.lab.ns(0),
        Path::new("/usr/bin/pebble"),
        &args(&["-config", dir.join("pebble.json").to_str().unwrap(), "-dnsserver", &dns]),
        &pebble_log,
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
    );
    let pebble_ca = pebble_crt.display().to_string();
    wait_for("pebble's directory answers", Duration::from_secs(20), || {
        curl(&c, &["--cacert", &pebble_ca, &format!("https://{leader}:14000/dir")]).ok().filter(|(s, _)| *s == 200)
    });

    let probe = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
    let ingress =
        "[[ingress]]\nname = \"secure\"\nhost = \"secure.lan\"\ntls = { acme = true }\nservice = \"web\"\nport = 80\n";
    let file = c.write("apps.toml", &format!("{}{ingress}", web_app("web", &image, 1, "1", "", probe)));
    c.ok(&["apply", "-f", &file]);
    let toml = format!(
        "image = \"{caddy}\"\nacme_ca = \"https://{leader}:14000/dir\"\nacme_email = \"ops@example.com\"\n\
         acme_ca_root = \"{pebble_ca}\"\n"
    );
    run_proxy(&mut c, &toml, &["board-1"]);

    // Pebble's root is made at its start: the client trusts it, and only it, for secure.lan.
    let (_, root) =
        curl(&c, &["--cacert", &pebble_ca, &format!("https://{leader}:15000/roots/0")]).expect("pebble's root");
    let root_file = dir.join("acme-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let resolve = format!("secure.lan:443:{board1}");
    let root_ca = root_file.display().to_string();
    let get = || curl(&c, &["--resolve", &resolve, "--cacert", &root_ca, "https://secure.lan/"]);
    let t = Instant::now();
    let served = wait_for("secure.lan served with pebble's certificate", Duration::from_secs(90), || {
        get().ok().filter(|(s, _)| *s == 200)
    });
    eprintln!("ACME: certificate from pebble and served in {:?} after the proxy started", t.elapsed());
    assert!(served.1.contains(" v1"), "{served:?}");
    let issued =
        || std::fs::read_to_string(&pebble_log).unwrap_or_default().matches("Issued certificate serial").count();
    assert_eq!(issued(), 1, "one certificate: {}", std::fs::read_to_string(&pebble_log).unwrap_or_default());
    let plain = curl(&c, &["-H", "Host: secure.lan", &format!("http://{board1}/")]).expect("http");
    assert_eq!(plain.0, 308, "http:// redirects to https://: {plain:?}");

    // Restarted (a new replica on the same board), the proxy finds its account and certificate on
    // its local volume: served again, pebble not asked.
    let before: Vec<String> = proxies(&c).into_iter().map(|r| r.meta.name).collect();
    c.ok(&["rollout", "restart", "app/bramble-ingress"]);
    wait_for("a new proxy replica running", Duration::from_secs(60), || {
        let now = proxies(&c);
        (now.len() == 1 && !before.contains(&now[0].meta.name)).then_some(())
    });
    wait_for("secure.lan served again", Duration::from_secs(30), || get().ok().filter(|(s, _)| *s == 200));
    assert_eq!(issued(), 1, "the restarted proxy asked pebble for nothing");
    // The leader looks at what the proxy serves (15 s after it starts, then every 10 minutes).
    let d = wait_for("the leader to find the served certificate", Duration::from_secs(60), || {
        let d = c.ok(&["describe", "ingress", "secure"]);
        d.contains("served by board-1: ends in").then_some(d)
    });
    assert!(d.contains("TLS:           acme"), "{d}");
    c.ok(&["delete", "app", "web"]);
    c.remove_containers();
}
